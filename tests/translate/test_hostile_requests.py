"""Hostile request bodies straight into the pure request side (no proxy).

Property: ``parse_body`` then ``translate_request`` (or ``check_chat_request``)
either raise ``TranslationError`` (a 400 whose ``param`` names a field of the body,
or a required one it lacks) or give a chat request that serialises as strict JSON.
Nothing else escapes, whatever the bytes.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qwen_oauth_mitm.translate import (
    MAX_DEPTH,
    TranslationError,
    check_chat_request,
    parse_body,
    translate_request,
)

REQUIRED = {"model", "input", "messages"}

_HUGE = "y" * 500_000
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**300), max_value=10**300)
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(
        [_HUGE, "", "\x00", "\ud800", "\u202e", "input_text", "function_call"]
    )
)
_keys = st.sampled_from(
    [
        "model",
        "input",
        "messages",
        "instructions",
        "stream",
        "tools",
        "tool_choice",
        "text",
        "reasoning",
        "type",
        "role",
        "content",
        "name",
        "call_id",
        "arguments",
        "output",
        "format",
        "schema",
        "parameters",
        "effort",
    ]
) | st.text(max_size=6)
_json = st.recursive(
    _scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(_keys, kids, max_size=5),
    max_leaves=30,
)
_item_types = st.sampled_from(
    [
        "message",
        "function_call",
        "function_call_output",
        "reasoning",
        "input_text",
        "input_image",
        "item_reference",
        "computer_call",
        "mcp_call",
        "",
        "MESSAGE",
    ]
)
_item = st.fixed_dictionaries(
    {"type": _item_types | _json},
    optional={
        "role": st.sampled_from(["user", "assistant", "system", "developer", "x"])
        | _json,
        "content": _json
        | st.lists(st.fixed_dictionaries({"type": _item_types}), max_size=3),
        "call_id": _json,
        "name": _json,
        "arguments": _json,
        "output": _json,
    },
)
_responses_body = st.fixed_dictionaries(
    {"model": st.just("coder-model") | _json, "input": _json | st.lists(_item)},
    optional={
        "stream": _json,
        "instructions": _json,
        "tools": _json
        | st.lists(
            st.fixed_dictionaries(
                {"type": st.just("function") | _json},
                optional={"name": _json, "parameters": _json},
            ),
            max_size=2,
        ),
        "tool_choice": _json,
        "text": _json,
        "reasoning": _json,
        "metadata": _json,
        "store": _json,
        "unknown_field": _json,
    },
)


def _encode(body: object) -> bytes:
    return json.dumps(body).encode()  # NaN/Infinity written as json.dumps does


def _root(param: str) -> str:
    return re.split(r"[.\[]", param, maxsplit=1)[0]


def _check_error(error: TranslationError, body: object) -> None:
    assert error.status == 400
    inner = error.body()["error"]
    assert set(inner) == {"message", "type", "param", "code"}
    assert inner["type"] == "invalid_request_error"
    json.dumps(inner, allow_nan=False)
    if error.param is None:
        assert re.search(r"JSON|body", error.message), error.message
    else:
        assert isinstance(body, dict)
        # A key of the body, or a path under one (a key may itself hold "." or
        # "[", or be empty: it is the path's start, whatever follows), or a
        # required one that is missing.
        param = error.param
        named = any(
            param == key or param.startswith((f"{key}.", f"{key}[")) for key in body
        )
        assert named or _root(param) in REQUIRED, (param, list(body))


def _loose(raw: bytes) -> object:
    """The body as plain ``json.loads`` reads it (None if it cannot)."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def _translate(raw: bytes) -> None:
    try:
        result = translate_request(parse_body(raw))
    except TranslationError as e:
        _check_error(e, _loose(raw))
        return
    chat = result.chat
    json.dumps(chat, allow_nan=False)  # strict JSON goes upstream
    assert chat["messages"]
    assert all(
        isinstance(m, dict) and isinstance(m["role"], str) for m in chat["messages"]
    )
    assert isinstance(chat["model"], str)
    assert chat.get("stream", False) is result.stream


def _chat(raw: bytes) -> None:
    try:
        chat = check_chat_request(parse_body(raw))
    except TranslationError as e:
        _check_error(e, _loose(raw))
        return
    assert isinstance(chat["model"], str)
    assert isinstance(chat["messages"], list)
    assert all(isinstance(m, dict) for m in chat["messages"])
    stream = chat.get("stream")
    assert stream is None or isinstance(stream, bool)  # null: the default


@given(_json | _responses_body)
def test_responses_bodies_translate_or_name_the_field(body: Any) -> None:
    _translate(_encode(body))


@given(
    _json
    | st.fixed_dictionaries(
        {
            "model": st.just("coder-model") | _json,
            "messages": _json
            | st.lists(st.dictionaries(_keys, _json, max_size=3), max_size=3),
        },
        optional={"stream": _json, "tools": _json},
    )
)
def test_chat_bodies_pass_or_name_the_field(body: Any) -> None:
    _chat(_encode(body))


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_escape(raw: bytes) -> None:
    _translate(raw)
    _chat(raw)


def _nested(depth: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * depth + closer * depth


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   ",
        b"\xff\xfe{}",
        b'{"model":"m","input":"\xc3"}',
        b"{'model':'m'}",
        b"NaN",
        b"-Infinity",
        b'{"model":"m",}',
        b'{"input":' + b"9" * 5000 + b"}",  # past Python's int digit limit
        _nested(10_000),
        _nested(10_000, b'{"a":', b"}").replace(b"{}", b"{1}", 1),
        _nested(MAX_DEPTH + 1),
        b'{"model":"m","input":' + _nested(MAX_DEPTH) + b"}",
    ],
    ids=lambda raw: repr(raw[:24]),
)
def test_unusable_bytes_are_invalid_json(raw: bytes) -> None:
    with pytest.raises(TranslationError) as info:
        parse_body(raw)
    assert info.value.code == "invalid_json"
    assert info.value.param is None


def test_nesting_up_to_the_limit_parses() -> None:
    assert parse_body(_nested(MAX_DEPTH)) is not None


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b'{"model":"m","input":"x","temperature":NaN}', "temperature"),
        (b'{"model":"m","input":"x","top_p":Infinity}', "top_p"),
        (
            b'{"model":"m","input":"x","max_output_tokens":-Infinity}',
            "max_output_tokens",
        ),
        (b'{"model":"m","input":"x","input":{"a":1}}', "input"),  # last key wins
        (b'{"model":"m","input":[{"type":"mcp_call"}]}', "input[0].type"),
        (b'{"model":["m"],"input":"x"}', "model"),
        (b'{"model":"m","input":"x","stream":"true"}', "stream"),
        (  # passed on as it is, so only the parse can catch it
            b'{"model":"m","input":"x","text":{"format":{"type":"json_schema",'
            b'"name":"n","schema":{"maximum":NaN}}}}',
            "text.format.schema.maximum",
        ),
        (
            b'{"model":"m","input":"x","tools":[{"type":"function","name":"f",'
            b'"parameters":{"enum":[1,Infinity]}}]}',
            "tools[0].parameters.enum[1]",
        ),
    ],
)
def test_named_fields(raw: bytes, param: str) -> None:
    with pytest.raises(TranslationError) as info:
        translate_request(parse_body(raw))
    assert info.value.param == param
    assert param in info.value.message or _root(param) in info.value.message
