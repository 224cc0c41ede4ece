"""The stand-in portal's chat endpoint: answers, tokens and injected faults."""

from __future__ import annotations

import json
import socket
import statistics
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from qwen_oauth_mitm.oauth.fake_server import FakeQwenOAuth
from qwen_oauth_mitm.portal import FakePortal, Fault, Text, ToolCall

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


@pytest.mark.parametrize("stream", [False, True])
def test_garbage_faults(portal: FakePortal, stream: bool) -> None:
    body = BODY | {"stream": stream}
    portal.script("sk-test", Fault("504"), Fault("html_200"), Fault("bad_json"))
    gateway, html, cut = (_post(portal, "sk-test", body) for _ in range(3))
    assert gateway.status_code == 504
    assert gateway.headers["content-type"].startswith("text/html")
    assert (html.status_code, html.headers["content-type"][:9]) == (200, "text/html")
    assert cut.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        cut.json()
    assert _post(portal, "sk-test", body).status_code == 200  # each used once


def test_error_under_200_whole_and_as_the_first_event(portal: FakePortal) -> None:
    portal.script("sk-test", Fault("error_200", code="insufficient_quota"))
    whole = _post(portal, "sk-test")
    assert whole.status_code == 200
    assert whole.json()["error"]["code"] == "insufficient_quota"
    portal.script("sk-test", Fault("error_200"))
    streamed = _post(portal, "sk-test", BODY | {"stream": True})
    events = _events(streamed.content)
    assert json.loads(events[0])["error"]["code"] == "InternalError"
    assert events[1:] == ["[DONE]"]


def test_bad_sse_puts_a_non_json_event_after_good_ones(portal: FakePortal) -> None:
    portal.script("sk-test", Fault("bad_sse", after_chunks=1))
    events = _events(_post(portal, "sk-test", BODY | {"stream": True}).content)
    json.loads(events[0])
    assert events[1] == "<b>not json</b>"
    assert events[-1] == "[DONE]"  # the rest follows


def test_hang_delays_the_headers_then_answers(portal: FakePortal) -> None:
    portal.script("sk-test", Fault("hang", delay=0.4))
    start = time.monotonic()
    r = _post(portal, "sk-test")
    assert time.monotonic() - start >= 0.4
    assert r.status_code == 200
    assert _post(portal, "sk-test").status_code == 200  # used once


# --- scripted replies -----------------------------------------------------------------

TOOLS = [
    {"type": "function", "function": {"name": "weather", "parameters": {}}},
    {"type": "function", "function": {"name": "read", "parameters": {}}},
]
TOOL_BODY = BODY | {"tools": TOOLS}
TOOL_RESULT = {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}


def _message(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    return dict(r.json()["choices"][0]["message"])


def _call(r: httpx.Response) -> tuple[str, str, dict[str, Any]]:
    [call] = _message(r)["tool_calls"]
    function = call["function"]
    return call["id"], function["name"], json.loads(function["arguments"])


def test_scripted_replies_are_one_queue_for_all_tokens(
    portal: FakePortal, fake: FakeQwenOAuth
) -> None:
    token = str(fake.issue_tokens()["access_token"])
    portal.reply_with(
        ToolCall("read", {"filePath": "/tmp/é.txt"}, id="call_read_1"),
        Text("No tool this time."),
    )
    assert _call(_post(portal, "sk-test", TOOL_BODY)) == (
        "call_read_1",
        "read",
        {"filePath": "/tmp/é.txt"},
    )
    second = _post(portal, token, TOOL_BODY)  # another token, the next reply
    assert second.json()["choices"][0]["finish_reason"] == "stop"
    assert _message(second) == {"role": "assistant", "content": "No tool this time."}
    assert portal.pending_replies() == []
    # The queue is empty: the usual call of the first tool offered.
    assert _call(_post(portal, "sk-test", TOOL_BODY)) == (
        "call_fake_1",
        "weather",
        {"city": "Paris"},
    )


def test_scripted_replies_wait_for_a_request_that_offers_tools(
    portal: FakePortal,
) -> None:
    call = ToolCall("read", {"filePath": "a.txt"})
    portal.reply_with(call)
    # No tools offered, or a tool result last: the usual answers, queue untouched.
    assert _message(_post(portal, "sk-test"))["content"] == portal.text
    after_tool = TOOL_BODY | {"messages": [*BODY["messages"], TOOL_RESULT]}
    assert _message(_post(portal, "sk-test", after_tool))["content"] == (
        "The tool said: sunny"
    )
    # A faulted request is not answered: the reply stays for the retry.
    portal.script("sk-test", Fault("429"))
    assert _post(portal, "sk-test", TOOL_BODY).status_code == 429
    assert _post(portal, "bad-token", TOOL_BODY).status_code == 401
    assert portal.pending_replies() == [call]
    assert _call(_post(portal, "sk-test", TOOL_BODY)) == (
        "call_fake_1",
        "read",
        {"filePath": "a.txt"},
    )


def test_scripted_tool_call_streams_with_reasoning(portal: FakePortal) -> None:
    portal.reply_with(ToolCall("read", {"filePath": "x"}, id="call_x"))
    body = TOOL_BODY | {"stream": True, "enable_thinking": True}
    events = [
        json.loads(e) for e in _events(_post(portal, "sk-test", body).content)[:-1]
    ]
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    reasoning = "".join(d.get("reasoning_content") or "" for d in deltas)
    calls = [c for d in deltas for c in d.get("tool_calls") or []]
    assert reasoning
    assert calls[0]["id"] == "call_x"
    assert calls[0]["function"]["name"] == "read"
    arguments = "".join(c["function"]["arguments"] for c in calls)
    assert json.loads(arguments) == {"filePath": "x"}
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"]][
        -1
    ] == "tool_calls"


def test_clear_replies_and_bad_replies(portal: FakePortal) -> None:
    portal.reply_with(Text("a"), Text("b"))
    assert portal.pending_replies() == [Text("a"), Text("b")]
    portal.clear_replies()
    assert portal.pending_replies() == []
    with pytest.raises(TypeError):
        portal.reply_with("text")  # type: ignore[arg-type]
    assert portal.pending_replies() == []


# --- Nagle ------------------------------------------------------------------------


def _first_chunk_delays(url: str, requests: int) -> list[float]:
    """Seconds from sending each streamed request (one kept-alive connection, as a
    proxy would use it) to receiving the first ``data:`` chunk of its answer."""
    host, port = url.removeprefix("http://").split("/", 1)[0].split(":")
    body = json.dumps(BODY | {"stream": True}).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer sk-test\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    delays = []
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(requests):
            start = time.perf_counter()
            sock.sendall(request)
            received = b""
            first: float | None = None
            while not received.endswith(b"\r\n0\r\n\r\n"):
                data = sock.recv(65536)
                assert data, received
                received += data
                if first is None and b"data: " in received:
                    first = time.perf_counter() - start
            assert first is not None
            delays.append(first)
    return delays


def test_first_stream_chunk_is_not_held_back_by_nagle(portal: FakePortal) -> None:
    # With Nagle on, the first chunk (a small write right after the headers) waits
    # for the client's delayed ACK: about 40 ms a request on Linux loopback.
    delays = _first_chunk_delays(portal.url, 8)
    assert statistics.median(delays) < 0.030, delays
