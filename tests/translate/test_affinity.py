"""Conversation keys for sticky routing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from qwen_oauth_mitm.translate import (
    TranslationError,
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


def test_agreement_with_audio_and_refusal_parts() -> None:
    body = {
        "model": "m",
        "input": [
            {
                "role": "system",
                "content": [
                    {"type": "input_text", "text": "s"},
                    {"type": "refusal", "refusal": "r"},
                    {"type": "input_text", "text": ""},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "hi"},
                    {"type": "input_audio", "input_audio": {"data": "AA"}},
                    {"type": "refusal", "refusal": "no"},
                ],
            },
        ],
    }
    chat = translate_request(body).chat
    assert conversation_key(body) == chat_conversation_key(chat)


def test_agreement_when_a_folded_system_message_is_the_first_user_turn() -> None:
    body = {
        "model": "m",
        "input": [
            {"role": "assistant", "content": "hello"},
            {"role": "system", "content": "s1"},
            {"type": "reasoning", "summary": []},
            {"role": "developer", "content": "s2"},
            {"role": "user", "content": "q"},
        ],
    }
    chat = translate_request(body).chat
    assert conversation_key(body) == chat_conversation_key(chat)


_texts = st.sampled_from(["", "a", "b", "q", " ", "a\n\nb", "[system] a"])
_text_parts = st.one_of(
    st.builds(lambda t: {"type": "input_text", "text": t}, _texts),
    st.builds(lambda t: {"type": "output_text", "text": t}, _texts),
    st.builds(lambda t: {"type": "refusal", "refusal": t}, _texts),
)
_user_parts = st.one_of(
    _text_parts,
    st.just({"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}),
    st.builds(
        lambda url, detail: {"type": "input_image", "image_url": url, **detail},
        st.sampled_from(["https://x/i.png", "data:image/png;base64,AA", "a"]),
        st.sampled_from([{}, {"detail": "low"}]),
    ),
    st.builds(
        lambda name: {
            "type": "input_file",
            "file_data": "data:application/pdf;base64,AA",
            **name,
        },
        st.sampled_from([{}, {"filename": "a"}]),
    ),
)


def _content(parts: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[Any]:
    return st.one_of(_texts, st.lists(parts, max_size=3))


def _message(role: str, parts: st.SearchStrategy[dict[str, Any]]) -> Any:
    return st.builds(
        lambda content, typed: {
            **({"type": "message"} if typed else {}),
            "role": role,
            "content": content,
        },
        _content(parts),
        st.booleans(),
    )


_items = st.one_of(
    _message("system", _text_parts),
    _message("developer", _text_parts),
    _message("user", _user_parts),
    _message("assistant", _text_parts),
    st.builds(
        lambda t: {
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": t}],
        },
        _texts,
    ),
    st.builds(
        lambda c: {
            "type": "function_call",
            "call_id": c,
            "name": "f",
            "arguments": "{}",
        },
        st.sampled_from(["c1", "c2"]),
    ),
    st.builds(
        lambda c, out: {"type": "function_call_output", "call_id": c, "output": out},
        st.sampled_from(["c1", "c2"]),
        _content(_user_parts),
    ),
)
_bodies = st.fixed_dictionaries(
    {"model": st.just("m"), "input": st.one_of(_texts, st.lists(_items, max_size=7))},
    optional={"instructions": _texts},
)


@given(_bodies)
def test_keys_agree_for_every_accepted_body(body: dict[str, Any]) -> None:
    try:
        chat = translate_request(body).chat
    except TranslationError:
        assume(False)
        raise
    assert conversation_key(body) == chat_conversation_key(chat)
    roles = [message["role"] for message in chat["messages"]]
    assert "system" not in roles[1:]


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
