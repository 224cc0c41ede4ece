"""Judging a 200 answer's opening before the client sees it (pure)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qwen_oauth_mitm.proxy.opening import (
    OPENING_LIMIT,
    StreamOpening,
    is_document,
    judge_stream,
    judge_whole,
)
from qwen_oauth_mitm.sse import ServerSentEvent

COMPLETION = {"choices": [{"index": 0, "message": {"content": "ok"}}]}


def _dumps(data: object) -> bytes:
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("body", "stream", "status", "outcome"),
    [
        (b"<html>504 Gateway Time-out</html>", False, 502, "200 not JSON"),
        (b'{"choices": [', False, 502, "200 not JSON"),
        (b"[1, 2]", False, 502, "200 not a completion"),
        (b'{"id": "x"}', False, 502, "200 not a completion"),
        (_dumps(COMPLETION), True, 502, "200 not streamed"),
        (
            _dumps({"error": {"code": "InternalError"}}),
            False,
            502,
            "200 with error 502",
        ),
        (
            _dumps({"error": {"code": "insufficient_quota", "message": "q"}}),
            True,
            429,
            "200 with error 429",
        ),
    ],
)
def test_a_whole_answer_that_is_no_completion_is_refused(
    body: bytes, stream: bool, status: int, outcome: str
) -> None:
    _, refusal = judge_whole(body, stream=stream)
    assert refusal is not None
    assert (refusal.status, refusal.outcome) == (status, outcome)
    assert "error" in json.loads(refusal.body)


def test_a_completion_passes_with_its_parsed_body() -> None:
    payload, refusal = judge_whole(_dumps(COMPLETION), stream=False)
    assert refusal is None
    assert payload == COMPLETION


def test_an_upstream_error_object_is_kept_as_the_body() -> None:
    raw = _dumps({"error": {"code": "Throttling", "message": "slow down"}})
    _, refusal = judge_whole(raw, stream=False)
    assert refusal is not None
    assert refusal.body == raw  # the client sees the upstream's own message


@pytest.mark.parametrize(
    ("event", "status"),
    [
        (ServerSentEvent(json.dumps({"choices": []})), None),
        (ServerSentEvent("<b>not json</b>"), 502),
        (ServerSentEvent(json.dumps({"error": {"code": "Throttling"}})), 429),
        (ServerSentEvent(json.dumps({"message": "down"}), event="error"), 502),
    ],
)
def test_a_streams_first_event(event: ServerSentEvent | None, status: int) -> None:
    refusal = judge_stream(event, ended=False)
    assert (refusal.status if refusal else None) == status


def test_the_opening_is_the_first_event_with_data_across_chunks() -> None:
    opening = StreamOpening()
    assert not opening.feed(b": keep-alive\n\ndata:\n\nda")
    assert not opening.feed(b'ta: {"a"')
    assert opening.feed(b": 1}\r\n\r\ndata: next\n\n")
    assert opening.event is not None
    assert opening.event.data == '{"a": 1}'
    assert bytes(opening.data).endswith(b"data: next\n\n")  # nothing is lost


def test_the_opening_gives_up_past_its_limit() -> None:
    opening = StreamOpening()
    assert opening.feed(b"x" * OPENING_LIMIT)
    assert opening.event is None


@pytest.mark.parametrize(
    ("content_type", "document"),
    [
        ("application/json", True),
        ("text/html; charset=utf-8", True),
        ("text/event-stream;charset=UTF-8", False),
        (None, False),
        ("text/plain", False),
    ],
)
def test_documents(content_type: str | None, document: bool) -> None:
    assert is_document(content_type) is document


@pytest.mark.parametrize(
    ("event", "ended", "status"),
    [
        (None, True, 502),  # empty, or only comments and keep-alives
        (ServerSentEvent("[DONE]"), False, 502),  # the end before any data
        (None, False, None),  # past the opening's limit: the translator's to judge
    ],
)
def test_a_stream_that_ends_with_no_data_is_garbage(
    event: ServerSentEvent | None, ended: bool, status: int | None
) -> None:
    """Relayed, it would pass for a complete answer (a chat client gets an empty
    200), with no failover though nothing was sent yet."""
    refusal = judge_stream(event, ended=ended)
    assert (refusal.status if refusal else None) == status
    if refusal is not None:
        assert refusal.outcome == "200 no events"
        assert json.loads(refusal.body)["error"]["code"] == "bad_upstream_answer"


_status_like = (
    st.sampled_from(["²", "٤٢٩", "4" * 5000, "429", ""])
    | st.text(st.characters(categories=["Nd", "No"]), max_size=5)
    | st.integers()
    | st.floats()
)
_json = st.recursive(
    st.none() | st.booleans() | _status_like | st.text(max_size=20),
    lambda kids: (
        st.lists(kids, max_size=3)
        | st.dictionaries(st.text(max_size=4), kids, max_size=3)
    ),
    max_leaves=12,
)
_error_objects = st.dictionaries(
    st.sampled_from(["status", "status_code", "http_status", "code", "message"]),
    _status_like | _json,
    max_size=4,
)


@given(
    payload=_json | _error_objects | st.fixed_dictionaries({"error": _error_objects}),
    named=st.booleans(),
)
def test_judging_arbitrary_json_never_raises(payload: object, named: bool) -> None:
    """A raise here escaped the forwarder as "502 Proxy error": no failover, the
    pick never settled."""
    raw = json.dumps(payload)
    for stream in (False, True):
        _, refusal = judge_whole(raw.encode(), stream=stream)
        assert refusal is None or 400 <= refusal.status <= 599
    event = ServerSentEvent(raw, event="error" if named else "message")
    refusal = judge_stream(event, ended=False)
    assert refusal is None or 400 <= refusal.status <= 599
