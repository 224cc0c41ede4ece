"""The SSE codec: WHATWG parsing rules, arbitrary chunking, linear time, encoding."""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qwen_oauth_mitm.sse import (
    ServerSentEvent,
    SSEDecoder,
    encode_event,
    encode_json_event,
)


def _decode_chunks(chunks: list[bytes]) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    return events + decoder.finish()


def _decode(raw: bytes) -> list[ServerSentEvent]:
    return _decode_chunks([raw])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"data: a\n\n", [ServerSentEvent("a")]),
        (b"data: a\r\n\r\n", [ServerSentEvent("a")]),
        (b"data: a\r\r", [ServerSentEvent("a")]),
        (b"data:a\n\n", [ServerSentEvent("a")]),
        # Only one leading space is stripped.
        (b"data:  a\n\n", [ServerSentEvent(" a")]),
        (b"data: a\ndata: b\n\n", [ServerSentEvent("a\nb")]),
        (b"data\n\n", [ServerSentEvent("")]),
        (b"data:\n\n", [ServerSentEvent("")]),
        (b"event: ping\ndata: x\n\n", [ServerSentEvent("x", event="ping")]),
        # The event type resets after each dispatch.
        (
            b"event: a\ndata: 1\n\ndata: 2\n\n",
            [ServerSentEvent("1", event="a"), ServerSentEvent("2")],
        ),
        (b": comment\ndata: x\n\n", [ServerSentEvent("x")]),
        # No data: nothing is dispatched, and the event type is dropped.
        (b"event: a\n\ndata: x\n\n", [ServerSentEvent("x")]),
        (
            b"id: 7\ndata: x\n\ndata: y\n\n",
            [ServerSentEvent("x", id="7"), ServerSentEvent("y", id="7")],
        ),
        (b"id: a\0b\ndata: x\n\n", [ServerSentEvent("x")]),
        (b"retry: 1500\ndata: x\n\n", [ServerSentEvent("x", retry=1500)]),
        (b"retry: 15s\ndata: x\n\n", [ServerSentEvent("x")]),
        (b"unknown: 1\ndata: x\n\n", [ServerSentEvent("x")]),
        (b"\xef\xbb\xbfdata: x\n\n", [ServerSentEvent("x")]),
        # Only one BOM is stripped; a second one is part of the field name.
        (b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n", []),
        (b"data: \xff\n\n", [ServerSentEvent("\ufffd")]),
        # U+2028 is not a line break in SSE (str.splitlines would split on it).
        ("data: a\u2028b\n\n".encode(), [ServerSentEvent("a\u2028b")]),
        # An event cut off by EOF is discarded.
        (b"data: x\n", []),
        (b"data: x", []),
    ],
)
def test_whatwg_rules(raw: bytes, expected: list[ServerSentEvent]) -> None:
    assert _decode(raw) == expected


def test_cr_ending_one_chunk_and_lf_starting_the_next() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n\r") == [ServerSentEvent("a")]
    assert decoder.feed(b"\ndata: b\n\n") == [ServerSentEvent("b")]


def test_lf_after_a_cr_blank_line_is_not_a_second_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\r") == [ServerSentEvent("a")]
    assert decoder.feed(b"\ndata: b\r\n\r\n") == [ServerSentEvent("b")]


def test_event_dispatches_at_the_byte_ending_its_blank_line() -> None:
    raw = b"data: a\r\n\r\ndata: b\n\n"
    decoder = SSEDecoder()
    dispatched_at = [i for i in range(len(raw)) if decoder.feed(raw[i : i + 1])]
    assert dispatched_at == [raw.index(b"\r\n\r\n") + 2, len(raw) - 1]


def test_bom_split_across_chunks() -> None:
    assert _decode_chunks([b"\xef", b"\xbb", b"\xbfdata: x\n\n"]) == [
        ServerSentEvent("x")
    ]


def test_empty_chunks_are_ignored() -> None:
    assert _decode_chunks([b"", b"data: x\n", b"", b"\n"]) == [ServerSentEvent("x")]


def test_finish_resets_partial_state() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: partial\n")
    assert decoder.finish() == []
    assert decoder.feed(b"data: x\n\n") == [ServerSentEvent("x")]


_STREAM = (
    "\ufeffevent: a\r\ndata: héllo 世界\r\n\r\n: c\rdata: 🎉\rdata:x\r\r"
    "id: 3\ndata: {}\n\nretry: 10\ndata\n\n"
).encode()


@given(st.lists(st.integers(0, len(_STREAM)), max_size=12))
def test_any_split_gives_the_same_events(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(_STREAM)]
    chunks = [_STREAM[a:b] for a, b in itertools.pairwise(points)]
    assert _decode_chunks(chunks) == _decode(_STREAM)
    assert len(_decode(_STREAM)) == 4


@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=8))
def test_arbitrary_bytes_split_anywhere_decode_the_same(
    raw: bytes, cuts: list[int]
) -> None:
    points = [0, *sorted(c for c in cuts if c <= len(raw)), len(raw)]
    chunks = [raw[a:b] for a, b in itertools.pairwise(points)]
    assert _decode_chunks(chunks) == _decode(raw)


_text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)


@given(
    st.lists(
        st.tuples(_text, st.sampled_from([None, "message", "x.y"])),
        min_size=1,
        max_size=5,
    ),
    st.data(),
)
def test_encode_then_decode_round_trips(
    events: list[tuple[str, str | None]], data: st.DataObject
) -> None:
    raw = b"".join(encode_event(text, event=event) for text, event in events)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=6))
    points = [0, *sorted(cuts), len(raw)]
    decoded = _decode_chunks([raw[a:b] for a, b in itertools.pairwise(points)])
    # Line breaks inside data come back as LF, as the spec normalises them.
    expected = [
        ServerSentEvent(
            text.replace("\r\n", "\n").replace("\r", "\n"), event=event or "message"
        )
        for text, event in events
    ]
    assert decoded == expected


def test_encode_forms() -> None:
    assert (
        encode_event("a\nb", event="t", id="1")
        == b"event: t\nid: 1\ndata: a\ndata: b\n\n"
    )
    assert encode_json_event({"k": "é"}) == b'data: {"k":"\\u00e9"}\n\n'
    assert encode_json_event([1], event="e") == b"event: e\ndata: [1]\n\n"
    # Lone surrogates must not break encoding.
    assert encode_json_event("\ud800") == b'data: "\\ud800"\n\n'


@pytest.mark.parametrize("bad", ["a\nb", "a\rb"])
def test_encode_rejects_line_breaks_in_event_and_id(bad: str) -> None:
    with pytest.raises(ValueError, match="line break"):
        encode_event("x", event=bad)
    with pytest.raises(ValueError, match="line break"):
        encode_event("x", id=bad)
    with pytest.raises(ValueError, match="line break"):
        encode_json_event({}, event=bad)


def _feed_bytewise(size: int) -> float:
    line = b"data: " + b"x" * size
    best = float("inf")
    for _ in range(3):
        decoder = SSEDecoder()
        start = time.perf_counter()
        for i in range(0, len(line), 4):
            decoder.feed(line[i : i + 4])
        assert decoder.feed(b"\n\n") == [ServerSentEvent("x" * size)]
        best = min(best, time.perf_counter() - start)
    return best


def test_long_line_in_tiny_chunks_is_linear() -> None:
    # A decoder that re-scans its buffer would take ~4x as long for twice the input.
    small, large = _feed_bytewise(100_000), _feed_bytewise(200_000)
    assert large < 3.0 * small
