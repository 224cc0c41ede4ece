"""The stand-in portal's chat endpoint: answers, tokens and injected faults."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from qwen_oauth_mitm.oauth.fake_server import FakeQwenOAuth
from qwen_oauth_mitm.portal import FakePortal, Fault

BODY = {"model": "coder-model", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def portal(fake: FakeQwenOAuth) -> Iterator[FakePortal]:
    with FakePortal(fake, keys=["sk-test"]) as p:
        yield p


def _post(portal: FakePortal, token: str, body: object = BODY) -> httpx.Response:
    with httpx.Client(trust_env=False) as client:
        return client.post(
            f"{portal.url}/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        )


def _events(raw: bytes) -> list[str]:
    return [
        line.removeprefix(b"data: ").decode()
        for line in raw.split(b"\n")
        if line.startswith(b"data: ")
    ]


def test_text_answer_for_a_key(portal: FakePortal) -> None:
    r = _post(portal, "sk-test")
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == portal.text
    assert r.json()["usage"]["total_tokens"] == 18


def test_oauth_tokens_of_the_linked_server_are_accepted(
    portal: FakePortal, fake: FakeQwenOAuth
) -> None:
    token = str(fake.issue_tokens()["access_token"])
    assert _post(portal, token).status_code == 200
    assert _post(portal, "fake-at-unknown").status_code == 401


def test_stream_ends_with_usage_and_done(portal: FakePortal) -> None:
    r = _post(portal, "sk-test", BODY | {"stream": True})
    events = _events(r.content)
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["usage"]["prompt_tokens"] == 11
    text = "".join(
        json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-2]
    )
    assert text == portal.text


def test_tool_call_when_tools_are_offered(portal: FakePortal) -> None:
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    r = _post(portal, "sk-test", BODY | {"tools": tools})
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "weather"


def test_faults_are_used_once_each_in_order(portal: FakePortal) -> None:
    portal.script("sk-test", Fault("429", retry_after=2), Fault("quota"), Fault("500"))
    first = _post(portal, "sk-test")
    assert (first.status_code, first.headers["retry-after"]) == (429, "2")
    assert "insufficient_quota" in _post(portal, "sk-test").text
    assert _post(portal, "sk-test").status_code == 500
    assert _post(portal, "sk-test").status_code == 200
    assert portal.statuses("sk-test") == [429, 429, 500, 200]


def test_drop_cuts_the_stream(portal: FakePortal) -> None:
    portal.script("sk-test", Fault("drop", after_chunks=2))
    with pytest.raises(httpx.RemoteProtocolError):
        _post(portal, "sk-test", BODY | {"stream": True})


def test_hang_delays_the_headers_then_answers(portal: FakePortal) -> None:
    portal.script("sk-test", Fault("hang", delay=0.4))
    start = time.monotonic()
    r = _post(portal, "sk-test")
    assert time.monotonic() - start >= 0.4
    assert r.status_code == 200
    assert _post(portal, "sk-test").status_code == 200  # used once
