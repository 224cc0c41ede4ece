"""StreamTranslator over the fixture corpus, chunk by chunk, and its edge cases."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from qwen_oauth_mitm.translate import StreamTranslator, counter_ids, translate_request
from qwen_oauth_mitm.translate.output import REASONING_MARKER

from .helpers import (
    CASES,
    NOW,
    STREAMS,
    check_sequence,
    parse_events,
    stream_request,
    translate_chunks,
    upstream,
)


def _chunk(delta: dict[str, Any] | None = None, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
    body = {"object": "chat.completion.chunk", "choices": [choice], "usage": None}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _usage_chunk(prompt: int, completion: int) -> bytes:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    body = {"object": "chat.completion.chunk", "choices": [], "usage": usage}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _call(index: int, call_id: str | None, name: str | None, args: str) -> bytes:
    function: dict[str, Any] = {"arguments": args}
    if name is not None:
        function["name"] = name
    entry: dict[str, Any] = {"index": index, "function": function}
    if call_id is not None:
        entry["id"] = call_id
    return _chunk({"tool_calls": [entry]})


DONE = b"data: [DONE]\n\n"


def _run(*chunks: bytes) -> tuple[list[dict[str, Any]], StreamTranslator]:
    out, translator = translate_chunks(chunks)
    return parse_events(out), translator


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixture_matches_expectations(name: str) -> None:
    events, translator = _run(upstream(name))
    summary = check_sequence(events)
    case = CASES[name]
    for key in ("status", "text", "reasoning", "tool_calls", "incomplete_reason"):
        assert summary[key] == case[key], key
    assert summary["usage"] == case["usage"]
    assert summary["error_code"] == case["error_code"]
    if case["error_message"] is not None:
        assert summary["error_message"] == case["error_message"]
    outcome = translator.outcome
    assert outcome.status == case["status"]
    assert outcome.failure == case["failure"]
    assert outcome.error_code == case["error_code"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixture_matches_golden_events(name: str) -> None:
    events, _ = _run(upstream(name))
    golden = STREAMS / f"{name}.events.jsonl"
    lines = [json.dumps(e, ensure_ascii=False) for e in events]
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert golden.read_text(encoding="utf-8").splitlines() == lines


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_event_leaves_at_the_chunk_that_completed_it(name: str) -> None:
    raw = upstream(name)
    whole, _ = translate_chunks([raw])
    translator = StreamTranslator(stream_request(), now=NOW, ids=counter_ids())
    per_byte = [translator.feed(raw[i : i + 1]) for i in range(len(raw))]
    # Events leave only at the byte ending an SSE event (the blank line); the
    # CRLF fixture's blank line ends at its CR.
    for end, produced in enumerate(per_byte):
        if produced:
            assert raw[end : end + 1] in (b"\n", b"\r")
            assert raw[end - 1 : end] in (b"\n", b"\r")
    assert [e for batch in per_byte for e in batch] + translator.finish() == whole


def test_delta_is_emitted_by_the_chunk_carrying_it() -> None:
    translator = StreamTranslator(stream_request(), now=NOW, ids=counter_ids())
    first = parse_events(translator.feed(_chunk({"content": "Hel"})))
    assert [e["type"] for e in first] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert first[-1]["delta"] == "Hel"
    half = _chunk({"content": "lo"})
    assert translator.feed(half[:-1]) == []
    second = parse_events(translator.feed(half[-1:]))
    assert [(e["type"], e["delta"]) for e in second] == [
        ("response.output_text.delta", "lo")
    ]
    closing = parse_events(translator.feed(_chunk(finish="stop")))
    assert [e["type"] for e in closing] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert translator.feed(_usage_chunk(3, 2)) == []
    final = parse_events(translator.feed(DONE))
    assert final[0]["type"] == "response.completed"
    assert final[0]["response"]["usage"]["input_tokens"] == 3
    assert translator.finish() == []


def test_tool_call_waits_for_its_name_and_then_sends_buffered_arguments() -> None:
    events, _ = _run(
        _call(0, "call_x", None, '{"a"'),
        _call(0, None, "read", ":1"),
        _call(0, None, "read", "}"),  # a repeated name must not be appended
        _chunk(finish="tool_calls"),
        DONE,
    )
    summary = check_sequence(events)
    assert summary["tool_calls"] == [
        {"call_id": "call_x", "name": "read", "arguments": '{"a":1}'}
    ]
    deltas = [e["delta"] for e in events if e["type"].endswith("arguments.delta")]
    assert deltas == ['{"a":1', "}"]


def test_interleaved_calls_on_one_index_are_kept_apart_by_id() -> None:
    events, _ = _run(
        _call(0, "call_a", "read", '{"p":'),
        _call(0, "call_b", "glob", '{"q":'),
        _call(0, "call_a", None, '"a"}'),
        _call(0, "call_b", None, '"b"}'),
        _chunk(finish="tool_calls"),
        DONE,
    )
    calls = check_sequence(events)["tool_calls"]
    assert calls == [
        {"call_id": "call_a", "name": "read", "arguments": '{"p":"a"}'},
        {"call_id": "call_b", "name": "glob", "arguments": '{"q":"b"}'},
    ]


def test_missing_call_id_is_synthesised() -> None:
    events, _ = _run(_call(0, None, "read", "{}"), _chunk(finish="tool_calls"), DONE)
    (call,) = check_sequence(events)["tool_calls"]
    assert call["call_id"] == "call_0001"


def test_text_item_closes_before_the_first_tool_call() -> None:
    events, _ = _run(
        _chunk({"content": "Looking."}),
        _call(0, "c1", "read", "{}"),
        _chunk(finish="tool_calls"),
        DONE,
    )
    check_sequence(events)
    kinds = [(e["type"], e.get("item", {}).get("type")) for e in events]
    assert kinds.index(("response.output_item.done", "message")) < kinds.index(
        ("response.output_item.added", "function_call")
    )


def test_reasoning_item_carries_marker_and_full_summary() -> None:
    events, _ = _run(
        _chunk({"reasoning_content": "think"}), _chunk(finish="stop"), DONE
    )
    check_sequence(events)
    done = next(e for e in events if e["type"] == "response.output_item.done")
    assert done["item"]["encrypted_content"] == REASONING_MARKER
    assert done["item"]["summary"] == [{"type": "summary_text", "text": "think"}]


def test_interleaved_reasoning_and_text_open_new_items() -> None:
    events, _ = _run(
        _chunk({"reasoning_content": "a"}),
        _chunk({"content": "b"}),
        _chunk({"reasoning_content": "c"}),
        _chunk({"content": "d"}),
        _chunk(finish="stop"),
        DONE,
    )
    check_sequence(events)
    final = events[-1]["response"]["output"]
    assert [item["type"] for item in final] == [
        "reasoning",
        "message",
        "reasoning",
        "message",
    ]


def test_repeated_finish_reason_and_late_content_are_harmless() -> None:
    # OpenRouter repeats finish_reason on its usage chunk.
    usage = json.dumps(
        {
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1},
        }
    )
    events, translator = _run(
        _chunk({"content": "x"}),
        _chunk(finish="stop"),
        f"data: {usage}\n\n".encode(),
        DONE,
        _chunk({"content": "after done"}),
    )
    summary = check_sequence(events)
    assert summary["text"] == "x"
    assert summary["usage"]["total_tokens"] == 2
    assert translator.outcome.finish_reason == "stop"


def test_done_without_finish_reason_fails_as_truncated() -> None:
    # §7: no finish_reason before the end → not a success; [DONE] is an end too.
    raw = b'data: {"choices":[{"index":0,"delta":{"content":"hel"}}]}\n\n' + DONE
    events, translator = _run(raw)
    summary = check_sequence(events)
    assert summary["status"] == "failed"
    assert summary["text"] == "hel"
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert translator.outcome.failure == "truncated"
    eof, _ = translate_chunks([raw[: -len(DONE)]])
    assert [e["type"] for e in parse_events(eof)] == [e["type"] for e in events]


def test_usage_only_chunk_after_finish_then_done_completes() -> None:
    # Qwen's real shape: finish_reason on the last choice chunk, then usage alone.
    events, translator = _run(
        _chunk({"content": "x"}), _chunk(finish="stop"), _usage_chunk(5, 1), DONE
    )
    summary = check_sequence(events)
    assert summary["status"] == "completed"
    assert summary["usage"]["total_tokens"] == 6
    assert translator.outcome.failure is None


@pytest.mark.parametrize(
    "keepalive",
    [
        b"data:\n\n",
        b"data: \n\n",
        b"data:  \t \n\n",
        b"data:\ndata:\n\n",
        b": ping\n\n",
        b":\n\n",
    ],
)
def test_keepalive_events_are_ignored(keepalive: bytes) -> None:
    chunks = [_chunk({"content": "a"}), _chunk({"content": "b"}), _chunk(finish="stop")]
    plain, _ = translate_chunks([*chunks, DONE])
    events, translator = _run(
        keepalive, chunks[0], keepalive, chunks[1], chunks[2], keepalive, DONE
    )
    assert check_sequence(events)["status"] == "completed"
    assert events == parse_events(plain)
    assert translator.outcome.failure is None


def test_keepalive_alone_does_not_start_the_response() -> None:
    translator = StreamTranslator(stream_request(), now=NOW, ids=counter_ids())
    assert translator.feed(b"data:\n\n: ping\n\n") == []


def test_error_event_without_data_is_an_upstream_error() -> None:
    events, translator = _run(_chunk({"content": "x"}), b"event: error\ndata:\n\n")
    assert check_sequence(events)["status"] == "failed"
    assert translator.outcome.failure == "upstream_error"


def test_eof_after_finish_reason_without_done_completes() -> None:
    events, _ = _run(_chunk({"content": "x"}), _chunk(finish="stop"))
    assert check_sequence(events)["status"] == "completed"


def test_empty_stream_fails_as_truncated() -> None:
    events, translator = _run()
    assert check_sequence(events)["status"] == "failed"
    assert translator.outcome.failure == "truncated"


def test_error_named_by_the_sse_event_field() -> None:
    events, translator = _run(
        b'event: error\ndata: {"code": 503, "message": "overloaded"}\n\n'
    )
    summary = check_sequence(events)
    assert (summary["error_code"], summary["error_message"]) == ("503", "overloaded")
    assert translator.outcome.failure == "upstream_error"


@pytest.mark.parametrize(
    "chunk",
    [
        b"data: [1, 2]\n\n",
        b'data: {"choices": {"index": 0}}\n\n',
        b'data: {"choices": [7]}\n\n',
        b'data: {"choices": [{"index": 1, "delta": {}}]}\n\n',
        b'data: {"choices": [{"index": 0, "delta": "text"}]}\n\n',
        b'data: {"choices": [{"index": 0, "delta": {"content": 5}}]}\n\n',
        b'data: {"choices": [{"index": 0, "delta": {"tool_calls": {"a": 1}}}]}\n\n',
        b'data: {"choices": [{"index": 0, "delta": {"tool_calls": [1]}}]}\n\n',
        b'data: {"choices":[{"delta":{"tool_calls":[{"index":"0"}]}}]}\n\n',
        b'data: {"choices":[{"delta":{"tool_calls":[{"function":[]}]}}]}\n\n',
        b'data: {"choices": [], "usage": 12}\n\n',
        b'data: {"choices": [{"finish_reason": 1}]}\n\n',
        b"data: " + b"[" * 100_000 + b"\n\n",
    ],
)
def test_malformed_chunks_fail_cleanly(chunk: bytes) -> None:
    events, translator = _run(_chunk({"content": "ok"}), chunk, DONE)
    assert check_sequence(events)["status"] == "failed"
    assert translator.outcome.failure == "malformed"


def test_tool_call_without_a_name_fails_at_finish() -> None:
    events, translator = _run(_call(0, "c", None, "{}"), _chunk(finish="tool_calls"))
    assert check_sequence(events)["status"] == "failed"
    assert translator.outcome.failure == "malformed"


def test_a_bug_becomes_a_failed_response_not_an_exception() -> None:
    def broken_ids(prefix: str) -> str:
        if prefix == "msg":
            raise RuntimeError("boom")
        return f"{prefix}_1"

    translator = StreamTranslator(stream_request(), now=NOW, ids=broken_ids)
    events = parse_events(translator.feed(_chunk({"content": "x"})))
    assert [e["type"] for e in events][-2:] == ["error", "response.failed"]
    assert translator.outcome.failure == "internal"
    assert "boom" in (translator.outcome.error_message or "")
    assert translator.feed(DONE) == []
    assert translator.finish() == []


def test_outcome_before_and_after() -> None:
    translator = StreamTranslator(stream_request(), now=NOW, ids=counter_ids())
    assert translator.outcome.status == "in_progress"
    assert translator.outcome.usage is None
    translator.feed(_chunk({"content": "x"}) + _chunk(finish="length"))
    translator.feed(_usage_chunk(4, 5) + DONE)
    outcome = translator.outcome
    assert (outcome.status, outcome.finish_reason) == ("incomplete", "length")
    assert outcome.usage is not None
    assert outcome.usage["total_tokens"] == 9
    assert outcome.response_id == "resp_0001"


def test_response_echoes_the_request() -> None:
    events, _ = _run(_chunk({"content": "x"}), _chunk(finish="stop"), DONE)
    created, final = events[0]["response"], events[-1]["response"]
    assert created["status"] == "in_progress"
    assert created["output"] == []
    assert created["created_at"] == NOW
    assert final["model"] == "coder-model"
    assert final["tool_choice"] == "auto"
    assert [t["name"] for t in final["tools"]] == ["read", "glob"]
    assert final["store"] is False


def test_reasoning_is_replayed_next_turn() -> None:
    # The AI SDK replays reasoning only with encrypted content: our marker plus the
    # summary must come back as reasoning_content on the assistant message.
    out, _ = translate_chunks([upstream("reasoning_then_text")])
    final = json.loads(out[-1].split(b"data: ", 1)[1])["response"]["output"]
    history = [{"role": "user", "content": "hi"}, *final]
    chat = translate_request({"model": "coder-model", "input": history}).chat
    assert (
        chat["messages"][1]["reasoning_content"]
        == CASES["reasoning_then_text"]["reasoning"]
    )


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("when", ["never", "before", "twice", "after the start"])
def test_prepare_changes_no_byte_of_the_stream(name: str, when: str) -> None:
    raw = upstream(name)
    plain, _ = translate_chunks([raw])
    translator = StreamTranslator(stream_request(), now=NOW, ids=counter_ids())
    if when in ("before", "twice"):
        translator.prepare()
    if when == "twice":
        translator.prepare()
    out: list[bytes] = []
    for i in range(0, len(raw), 97):  # the first event may straddle two feeds
        out += translator.feed(raw[i : i + 97])
        if when == "after the start" and out:
            translator.prepare()
    out += translator.finish()
    assert out == plain


def test_prepare_renders_before_anything_is_fed() -> None:
    translator = StreamTranslator(stream_request(), now=NOW, ids=counter_ids())
    translator.prepare()
    assert translator.feed(b": ping\n\n") == []  # rendered, not emitted
    first = parse_events(translator.feed(_chunk({"role": "assistant"})))
    assert [e["type"] for e in first] == ["response.created", "response.in_progress"]
    assert [e["sequence_number"] for e in first] == [0, 1]


def test_a_failing_prepare_leaves_the_stream_to_render_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    translator = StreamTranslator(stream_request(), now=NOW, ids=counter_ids())

    def broken(*_: object, **__: object) -> str:
        raise RuntimeError("boom")

    monkeypatch.setattr(translator, "_response", broken)
    translator.prepare()  # no exception
    monkeypatch.undo()
    plain, _ = translate_chunks([upstream("plain_text")])
    out = translator.feed(upstream("plain_text")) + translator.finish()
    assert out == plain
