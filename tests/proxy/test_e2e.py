"""End to end: the openai SDK -> mitmdump with our addon -> the stand-in portal."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qwen_oauth_mitm.oauth.fake_server import FakeQwenOAuth
from qwen_oauth_mitm.paths import StatePaths
from qwen_oauth_mitm.portal import FakePortal

from .harness import Proxy, oauth_account, run_mitmdump, write_accounts

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


@pytest.fixture
def proxy(
    tmp_path: Path, fake: FakeQwenOAuth, portal: FakePortal, paths: StatePaths
) -> Iterator[Proxy]:
    write_accounts(paths, [oauth_account(fake, "work")])
    with run_mitmdump(tmp_path, fake, portal) as p:
        yield p


def _no_secret_in(fake: FakeQwenOAuth, text: str) -> None:
    assert fake.issued
    for token in fake.issued:
        assert token not in text


def test_non_stream_text(proxy: Proxy, portal: FakePortal, fake: FakeQwenOAuth) -> None:
    with proxy.client() as client:
        answer = client.responses.create(model="coder-model", input="hi")
    assert answer.output_text == portal.text
    assert answer.usage is not None
    assert answer.usage.total_tokens == 18
    [seen] = portal.requests
    assert fake.is_valid_access_token(seen.token)
    assert seen.headers["x-dashscope-authtype"] == "qwen-oauth"
    assert seen.headers["user-agent"].startswith("QwenCode/")
    assert "cookie" not in seen.headers
    assert "dummy-client-key" not in str(seen.headers)
    assert not [h for h in seen.headers if h.startswith("x-stainless")]
    _no_secret_in(fake, proxy.output())


def test_stream_text_arrives_before_the_upstream_ends(
    proxy: Proxy, portal: FakePortal
) -> None:
    portal.chunk_delay = 0.3
    with proxy.client() as client:
        start = time.monotonic()
        stream = client.responses.create(model="coder-model", input="hi", stream=True)
        first_delta: float | None = None
        text, types = "", []
        with stream:
            for event in stream:
                types.append(event.type)
                if event.type == "response.output_text.delta":
                    first_delta = first_delta or time.monotonic() - start
                    text += event.delta
        total = time.monotonic() - start
    assert text == portal.text
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    assert first_delta is not None
    # The portal pauses 0.3 s between its ~9 chunks: the first delta must not wait
    # for the end.
    assert total - first_delta > 1.0


def test_chat_completions_get_the_token_swap_only(
    proxy: Proxy, portal: FakePortal, fake: FakeQwenOAuth
) -> None:
    with proxy.client() as client:
        answer = client.chat.completions.create(
            model="coder-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert answer.choices[0].message.content == portal.text
    assert fake.is_valid_access_token(portal.requests[0].token)


def test_models_are_listed(proxy: Proxy, portal: FakePortal) -> None:
    with proxy.client() as client:
        ids = [m.id for m in client.models.list()]
    assert ids == ["coder-model"]
    assert portal.requests == []


def test_malformed_json_is_400_and_reaches_no_upstream(
    proxy: Proxy, portal: FakePortal
) -> None:
    with proxy.http() as http:
        r = http.post(
            "https://portal.qwen.ai/v1/responses",
            content=b"{nope",
            headers={"Content-Type": "application/json"},
        )
    assert r.status_code == 400
    assert "not valid JSON" in r.json()["error"]["message"]
    assert portal.requests == []


def test_another_host_keeps_its_authorization(
    proxy: Proxy, fake: FakeQwenOAuth
) -> None:
    with FakePortal(keys=["sk-other"]) as other, proxy.http() as http:
        r = http.post(
            f"{other.url}/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
            headers={"Authorization": "Bearer sk-other"},
        )
        assert r.status_code == 200
        assert [q.token for q in other.requests] == ["sk-other"]


def test_a_bad_option_stops_mitmdump_with_the_reason(
    tmp_path: Path, fake: FakeQwenOAuth, portal: FakePortal
) -> None:
    options = ["--set", "qwen_rotation_strategy=bogus"]
    with run_mitmdump(tmp_path, fake, portal, options, wait=False) as p:
        code = p.process.wait(timeout=30)
        out = p.output()
    assert code != 0
    assert "qwen_rotation_strategy" in out or "rotation_strategy" in out
    assert "bogus" in out
    assert json.dumps("bogus") in out or "'bogus'" in out


def test_a_repeated_option_stops_mitmdump_instead_of_dropping_the_addon(
    tmp_path: Path, fake: FakeQwenOAuth, portal: FakePortal
) -> None:
    """mitmproxy 12.3 alone would run on without the addon (requests to the real
    portal with the client's key); the addon's load guard makes it exit."""
    options = ["--set", "qwen_debug=false", "--set", "qwen_debug=false"]
    with run_mitmdump(tmp_path, fake, portal, options, wait=False) as p:
        code = p.process.wait(timeout=30)
        out = p.output()
    assert code != 0
    assert "--set qwen_debug was given 2 times (false, false); give it once." in out


WEATHER: Any = {
    "type": "function",
    "name": "weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def test_tool_call_round_trip(proxy: Proxy, portal: FakePortal) -> None:
    with proxy.client() as client:
        first = client.responses.create(
            model="coder-model", input="Weather in Paris?", tools=[WEATHER]
        )
        [call] = [item for item in first.output if item.type == "function_call"]
        assert call.name == "weather"
        assert json.loads(call.arguments) == {"city": "Paris"}
        second = client.responses.create(
            model="coder-model",
            tools=[WEATHER],
            input=[
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "type": "function_call",
                    "call_id": call.call_id,
                    "name": call.name,
                    "arguments": call.arguments,
                },
                {
                    "type": "function_call_output",
                    "call_id": call.call_id,
                    "output": "sunny",
                },
            ],
        )
    assert second.output_text == "The tool said: sunny"
    sent = portal.requests[1].body["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call.call_id
    assert sent[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}


def test_image_input(proxy: Proxy, portal: FakePortal) -> None:
    image = "data:image/png;base64,iVBORw0KGgo="
    with proxy.client() as client:
        answer = client.responses.create(
            model="coder-model",
            input=[
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "What is this?"},
                        {"type": "input_image", "image_url": image, "detail": "auto"},
                    ],
                }
            ],
        )
    assert answer.output_text == "I see an image."
    parts = portal.requests[0].body["messages"][0]["content"]
    [image_part] = [p for p in parts if p["type"] == "image_url"]
    assert image_part["image_url"]["url"] == image


def test_accounts_added_while_running_are_used_without_restart(
    tmp_path: Path, fake: FakeQwenOAuth, portal: FakePortal, paths: StatePaths
) -> None:
    write_accounts(paths, [])
    with run_mitmdump(tmp_path, fake, portal) as proxy, proxy.http() as http:
        body = {"model": "coder-model", "input": "hi"}
        url = "https://portal.qwen.ai/v1/responses"
        before = http.post(url, json=body)
        assert before.status_code == 429
        assert "qwen-oauth login" in before.json()["error"]["message"]
        write_accounts(paths, [oauth_account(fake, "late")])
        after = http.post(url, json=body)
        assert after.status_code == 200, after.text
    assert portal.statuses() == [200]
