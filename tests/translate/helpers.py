"""Shared helpers for the translation tests: fixtures, running a stream, and a
checker of the invariants every translated event sequence must keep."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qwen_oauth_mitm.sse import SSEDecoder
from qwen_oauth_mitm.translate import (
    StreamTranslator,
    TranslatedRequest,
    counter_ids,
    translate_request,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
STREAMS = FIXTURES / "streams"
CASES: dict[str, dict[str, Any]] = json.loads(
    (STREAMS / "cases.json").read_text(encoding="utf-8")
)
NOW = 1_764_000_000
TERMINAL = ("response.completed", "response.incomplete", "response.failed")

TOOLS = [
    {
        "type": "function",
        "name": name,
        "description": f"the {name} tool",
        "parameters": {"type": "object", "properties": {}},
        "strict": False,
    }
    for name in ("read", "glob")
]


def request_body(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "coder-model",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        "tools": TOOLS,
        "tool_choice": "auto",
        "stream": True,
        "store": False,
    }
    body.update(extra)
    return body


def stream_request() -> TranslatedRequest:
    return translate_request(request_body())


def upstream(name: str) -> bytes:
    return (STREAMS / f"{name}.sse").read_bytes()


def translate_chunks(
    chunks: Iterable[bytes], request: TranslatedRequest | None = None
) -> tuple[list[bytes], StreamTranslator]:
    translator = StreamTranslator(
        request or stream_request(), now=NOW, ids=counter_ids()
    )
    out: list[bytes] = []
    for chunk in chunks:
        out += translator.feed(chunk)
    out += translator.finish()
    return out, translator


def parse_events(out: Iterable[bytes]) -> list[dict[str, Any]]:
    """Decode our output as a client would; the SSE event name must match ``type``."""
    decoder = SSEDecoder()
    events = []
    for raw in out:
        for sse in decoder.feed(raw):
            event = json.loads(sse.data)
            assert sse.event == event["type"]
            events.append(event)
    return events


def check_sequence(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Assert the invariants real clients rely on; return what a client ends up with."""
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events[:2]] == [
        "response.created",
        "response.in_progress",
    ]
    response_id = events[0]["response"]["id"]
    assert isinstance(events[0]["response"]["created_at"], int)
    terminals = [e for e in events if e["type"] in TERMINAL]
    assert len(terminals) == 1
    assert terminals[0] is events[-1]
    final = terminals[0]["response"]
    assert final["id"] == response_id
    for event in events:
        if "response" in event:
            assert event["response"]["id"] == response_id
    usage = final["usage"]
    for key in ("input_tokens", "output_tokens", "total_tokens"):
        assert isinstance(usage[key], int)
    items = _check_items(events, failed=final["status"] == "failed")
    if final["status"] != "failed":
        assert final["output"] == [items[i] for i in sorted(items)]
    error = next((e for e in events if e["type"] == "error"), None)
    if final["status"] == "failed":
        assert error is not None
        assert isinstance(error["code"], str)
        assert events[-2] is error
        assert final["error"] == {"code": error["code"], "message": error["message"]}
    else:
        assert error is None
    return _summary(final, events)


def _check_items(events: list[dict[str, Any]], *, failed: bool) -> dict[int, Any]:
    added: dict[int, dict[str, Any]] = {}
    done: dict[int, dict[str, Any]] = {}
    deltas: dict[str, list[str]] = {}
    for event in events:
        kind = event["type"]
        if kind == "response.output_item.added":
            index = event["output_index"]
            assert index == len(added), "output_index must count up from 0"
            added[index] = event["item"]
            deltas[event["item"]["id"]] = []
        elif kind == "response.output_item.done":
            index = event["output_index"]
            assert index in added
            assert index not in done
            assert event["item"]["id"] == added[index]["id"]
            done[index] = event["item"]
        elif kind.endswith(".delta"):
            item_id = event["item_id"]
            index = next(i for i, item in added.items() if item["id"] == item_id)
            assert index not in done, "a delta after its item is done"
            assert event["output_index"] == index
            deltas[item_id].append(event["delta"])
    if not failed:
        assert set(done) == set(added), "every added item must be done"
    for index, item in done.items():
        streamed = "".join(deltas[item["id"]])
        if item["type"] == "function_call":
            assert item["status"] == "completed"
            assert item["arguments"] == streamed
            assert item["call_id"]
            assert item["name"]
        elif item["type"] == "message":
            assert item["content"][0]["text"] == streamed
            assert item["content"][0]["annotations"] == []
        else:
            assert item["summary"][0]["text"] == streamed
        assert added[index]["type"] == item["type"]
    return done


def _summary(final: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    text = "".join(
        e["delta"] for e in events if e["type"] == "response.output_text.delta"
    )
    reasoning = "".join(
        e["delta"]
        for e in events
        if e["type"] == "response.reasoning_summary_text.delta"
    )
    calls = [
        {k: item[k] for k in ("call_id", "name", "arguments")}
        for item in final["output"]
        if item["type"] == "function_call"
    ]
    usage = final["usage"]
    error = final["error"] or {}
    incomplete = final["incomplete_details"] or {}
    return {
        "status": final["status"],
        "text": text,
        "reasoning": reasoning,
        "tool_calls": calls,
        "usage": {
            "input_tokens": usage["input_tokens"],
            "output_tokens": usage["output_tokens"],
            "cached_tokens": usage["input_tokens_details"]["cached_tokens"],
            "reasoning_tokens": usage["output_tokens_details"]["reasoning_tokens"],
            "total_tokens": usage["total_tokens"],
        },
        "incomplete_reason": incomplete.get("reason"),
        "error_code": error.get("code"),
        "error_message": error.get("message"),
    }
