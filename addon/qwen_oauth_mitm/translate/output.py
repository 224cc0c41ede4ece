"""Building blocks of a Responses ``response`` object, shared by both translators.

Every shape here carries the fields both real clients insist on (design note
responses-api.md §3-4): ``annotations`` on ``output_text``, ``summary`` on reasoning,
``status`` on function calls, numeric usage with its two detail objects.
"""

from __future__ import annotations

import json
from typing import Any, Literal, NotRequired, TypedDict, Unpack

from qwen_oauth_mitm.translate.request import TranslatedRequest

__all__ = [
    "REASONING_MARKER",
    "Status",
    "function_call_item",
    "incomplete_reason",
    "message_item",
    "output_text_part",
    "reasoning_item",
    "response_object",
    "translate_usage",
]

type Status = Literal["in_progress", "completed", "incomplete", "failed"]

REASONING_MARKER = "qwen-oauth-mitm:reasoning-in-summary"
"""``encrypted_content`` of our reasoning items.

The AI SDK replays a reasoning item next turn only when it carries encrypted content
(and OpenCode keeps it), so this marker makes Qwen's reasoning come back to us, in
``summary``, where the request translator turns it into ``reasoning_content``.
"""


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [output_text_part(text)],
    }


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def reasoning_item(item_id: str, text: str | None) -> dict[str, Any]:
    """A reasoning item; ``text=None`` gives the empty form of ``output_item.added``."""
    summary = [] if text is None else [{"type": "summary_text", "text": text}]
    return {
        "id": item_id,
        "type": "reasoning",
        "summary": summary,
        "encrypted_content": REASONING_MARKER,
    }


def function_call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "arguments": arguments,
        "call_id": call_id,
        "name": name,
    }


def _count(value: object) -> int:
    # Upstream numbers are trusted only when they are plain non-negative integers.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    return 0


def _details(usage: dict[str, Any], key: str) -> dict[str, Any]:
    value = usage.get(key)
    return value if isinstance(value, dict) else {}


def translate_usage(usage: object) -> dict[str, Any]:
    """Chat ``usage`` → Responses usage; all zeros when absent or malformed."""
    raw = usage if isinstance(usage, dict) else {}
    prompt = _details(raw, "prompt_tokens_details")
    completion = _details(raw, "completion_tokens_details")
    input_tokens = _count(raw.get("prompt_tokens"))
    output_tokens = _count(raw.get("completion_tokens"))
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {
            "cached_tokens": _count(prompt.get("cached_tokens")),
            "cache_write_tokens": _count(prompt.get("cache_creation_input_tokens")),
        },
        "output_tokens": output_tokens,
        "output_tokens_details": {
            "reasoning_tokens": _count(completion.get("reasoning_tokens")),
        },
        "total_tokens": _count(raw.get("total_tokens")) or input_tokens + output_tokens,
    }


class ResponseFields(TypedDict):
    """A response object's own fields (the request's echo aside)."""

    response_id: str
    created_at: int
    status: Status
    output: list[dict[str, Any]]
    usage: dict[str, Any] | None
    error: NotRequired[dict[str, Any] | None]
    incomplete_reason: NotRequired[str | None]


def response_object(
    request: TranslatedRequest, **fields: Unpack[ResponseFields]
) -> dict[str, Any]:
    """The ``response`` object, with the request's echo fields."""
    return {
        **_head(fields),
        **request.echo,
        "output": fields["output"],
        "usage": fields["usage"],
    }


def echo_fields(request: TranslatedRequest) -> str:
    """The request's echo fields as compact JSON text, without the braces: the
    part of :func:`response_json` that is the same in every event of a response."""
    return _dumps(request.echo)[1:-1]


def response_json(echo: str, **fields: Unpack[ResponseFields]) -> str:
    """:func:`response_object` as compact JSON text, byte for byte what
    ``json.dumps`` (compact) writes of it, with ``echo`` (:func:`echo_fields`)
    already serialized. The echo holds the request's tools and instructions, tens
    of KiB for OpenCode, and a stream repeats it in three events: serialized once
    per stream, it no longer costs the first event two ``json.dumps`` of it."""
    head = _dumps(_head(fields))
    tail = _dumps({"output": fields["output"], "usage": fields["usage"]})
    middle = f",{echo}," if echo else ","
    return head[:-1] + middle + tail[1:]


def _head(fields: ResponseFields) -> dict[str, Any]:
    """The fields before the echo, in the order clients see them."""
    reason = fields.get("incomplete_reason")
    return {
        "id": fields["response_id"],
        "object": "response",
        "created_at": fields["created_at"],
        "status": fields["status"],
        "error": fields.get("error"),
        "incomplete_details": None if reason is None else {"reason": reason},
    }


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def incomplete_reason(finish_reason: str | None) -> str | None:
    """Chat ``finish_reason`` → Responses ``incomplete_details.reason`` (or None)."""
    if finish_reason == "length":
        return "max_output_tokens"
    if finish_reason == "content_filter":
        return "content_filter"
    return None
