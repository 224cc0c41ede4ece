"""Conversation keys for sticky account routing (pure; never raises).

Prompt caching only pays if every turn of a conversation goes to the same account,
so rotation wants a key that stays the same across turns. ``prompt_cache_key`` is
that key when the client sends one (OpenCode sends its session id there). Otherwise
the key is a hash of what every turn of a conversation repeats: the system prompt
(``instructions`` plus leading system/developer messages) and the first user message.

The Responses and the Chat Completions variants agree: for a Responses body without
``prompt_cache_key`` that ``translate_request`` accepts, ``conversation_key(body)``
equals ``chat_conversation_key(translate_request(body).chat)``. That holds by
construction: a Responses body is keyed by the chat messages the request translator
makes of it (only up to the first user message: ``translate_input_head``), so audio
placeholders, refusal parts and folded system notes count the same on both sides.
A body the translator rejects falls back to a lenient walk of the raw items.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from qwen_oauth_mitm.translate._check import opt_str
from qwen_oauth_mitm.translate.errors import TranslationError
from qwen_oauth_mitm.translate.messages import translate_input_head

__all__ = ["chat_conversation_key", "conversation_key"]

_SYSTEM_ROLES = ("system", "developer")


def conversation_key(body: object) -> str | None:
    """Key for a Responses request body; None when it names no conversation."""
    if not isinstance(body, dict):
        return None
    explicit = _explicit(body)
    if explicit is not None:
        return explicit
    instructions = body.get("instructions")
    items = body.get("input")
    try:
        head = translate_input_head(items, opt_str(instructions, "instructions"))
    except TranslationError:
        pass
    else:
        return _from_messages(head, [], responses=False)
    system = [instructions] if isinstance(instructions, str) and instructions else []
    if isinstance(items, str):
        return _hash(system, items)
    return _from_messages(items, system, responses=True)


def chat_conversation_key(body: object) -> str | None:
    """Key for a Chat Completions request body; None when it names no conversation."""
    if not isinstance(body, dict):
        return None
    explicit = _explicit(body)
    if explicit is not None:
        return explicit
    return _from_messages(body.get("messages"), [], responses=False)


def _explicit(body: dict[str, Any]) -> str | None:
    key = body.get("prompt_cache_key")
    return f"pck:{key}" if isinstance(key, str) and key else None


def _from_messages(
    messages: object, system: list[str], *, responses: bool
) -> str | None:
    if not isinstance(messages, list):
        return None
    leading = True
    for message in messages:
        if not isinstance(message, dict):
            continue
        if responses and message.get("type", "message") not in ("message", None):
            leading = leading and message.get("type") == "reasoning"
            continue
        role = message.get("role")
        if role in _SYSTEM_ROLES:
            text = _content_text(message.get("content"), "\n\n")
            if leading and text:
                system.append(text)
            continue
        leading = False
        if role == "user":
            return _hash(system, _content_text(message.get("content"), "\n"))
    return None


def _content_text(content: object, joiner: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return joiner.join(text for part in content if (text := _part_text(part)))


def _part_text(part: object) -> str:
    if not isinstance(part, dict):
        return ""
    text = part.get("text")
    if isinstance(text, str):
        return text
    image = part.get("image_url")
    if isinstance(image, dict):  # the Chat Completions form nests the url
        image = image.get("url")
    return image if isinstance(image, str) else ""


def _hash(system: list[str], first_user: str) -> str:
    payload = json.dumps(["\n\n".join(system), first_user], ensure_ascii=True)
    return "h:" + hashlib.sha256(payload.encode()).hexdigest()[:32]
