"""Conversation keys for sticky routing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from qwen_oauth_mitm.translate import (
    chat_conversation_key,
    conversation_key,
    translate_request,
)

from .helpers import FIXTURES


def _opencode(name: str) -> dict[str, Any]:
    path = FIXTURES / f"opencode-1.18.33-{name}-request.json"
    body: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))["body"]
    return body


def test_prompt_cache_key_wins() -> None:
    body = _opencode("main")
    assert conversation_key(body) == f"pck:{body['prompt_cache_key']}"
    assert chat_conversation_key({"prompt_cache_key": "k", "messages": []}) == "pck:k"


def test_key_is_stable_across_turns() -> None:
    first = {
        "model": "m",
        "instructions": "be brief",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "q1"}]}],
    }
    later = {
        **first,
        "input": [
            *first["input"],
            {"role": "assistant", "content": [{"type": "output_text", "text": "a"}]},
            {"role": "user", "content": "q2"},
        ],
    }
    other = {**first, "input": "q-other"}
    key = conversation_key(first)
    assert key is not None
    assert key.startswith("h:")
    assert conversation_key(later) == key
    assert conversation_key(other) != key
    assert conversation_key({**first, "instructions": "other"}) != key


@pytest.mark.parametrize("name", ["main", "title"])
def test_responses_and_chat_keys_agree(name: str) -> None:
    body = _opencode(name)
    body.pop("prompt_cache_key", None)
    chat = translate_request(body).chat
    assert conversation_key(body) is not None
    assert conversation_key(body) == chat_conversation_key(chat)


def test_agreement_with_images_and_system_parts() -> None:
    body = {
        "model": "m",
        "input": [
            {
                "role": "developer",
                "content": [
                    {"type": "input_text", "text": "s1"},
                    {"type": "input_text", "text": "s2"},
                ],
            },
            {"type": "reasoning", "summary": []},
            {"role": "system", "content": "s3"},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "look"},
                    {"type": "input_image", "image_url": "https://x/i.png"},
                ],
            },
        ],
    }
    chat = translate_request(body).chat
    assert conversation_key(body) == chat_conversation_key(chat)


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        "x",
        {},
        {"input": 5},
        {"input": [{"role": "assistant", "content": "a"}]},
        {"input": [1, {"type": "function_call"}]},
        {"messages": "x"},
    ],
)
def test_no_conversation_gives_none(body: object) -> None:
    assert conversation_key(body) is None
    assert chat_conversation_key(body) is None
