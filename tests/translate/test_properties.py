"""Hypothesis: chunking never matters, and nothing raises on arbitrary input."""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from qwen_oauth_mitm.translate import (
    TranslationError,
    conversation_key,
    translate_request,
)

from .helpers import (
    CASES,
    FIXTURES,
    TERMINAL,
    check_sequence,
    parse_events,
    request_body,
    translate_chunks,
    upstream,
)

_RAW = {name: upstream(name) for name in sorted(CASES)}
_WHOLE = {name: translate_chunks([raw])[0] for name, raw in _RAW.items()}


def _split(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(c % (len(raw) + 1) for c in cuts), len(raw)]
    return [raw[a:b] for a, b in itertools.pairwise(points)]


@given(st.sampled_from(sorted(CASES)), st.lists(st.integers(0, 10**6), max_size=30))
def test_any_split_gives_the_same_events(name: str, cuts: list[int]) -> None:
    out, _ = translate_chunks(_split(_RAW[name], cuts))
    assert b"".join(out) == b"".join(_WHOLE[name])


_lines = st.sampled_from(
    [
        b"data: [DONE]",
        b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}',
        b'data: {"choices":[{"index":0,"delta":{"reasoning_content":"r"}}]}',
        b'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"id":"a",'
        b'"function":{"name":"f","arguments":"{"}}]}}]}',
        b'data: {"choices":[{"delta":{"tool_calls":[{"index":1,"function":'
        b'{"arguments":"}"}}]}}]}',
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
        b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}',
        b'data: {"error":{"message":"x"}}',
        b"event: error",
        b": keep-alive",
        b"data: {",
        b"",
        b"",
    ]
)


@given(
    st.lists(st.one_of(_lines, st.binary(max_size=20)), max_size=25),
    st.sampled_from([b"\n", b"\r\n", b"\r"]),
    st.lists(st.integers(0, 10**6), max_size=10),
)
def test_translator_never_raises_and_always_terminates(
    lines: list[bytes], newline: bytes, cuts: list[int]
) -> None:
    raw = newline.join(lines) + newline
    out, translator = translate_chunks(_split(raw, cuts))
    events = parse_events(out)
    summary = check_sequence(events)
    assert events[-1]["type"] in TERMINAL
    assert translator.outcome.failure != "internal", translator.outcome
    assert translator.outcome.status == summary["status"]
    whole, _ = translate_chunks([raw])
    assert b"".join(whole) == b"".join(out)


@given(st.binary(max_size=400))
def test_arbitrary_bytes(raw: bytes) -> None:
    out, translator = translate_chunks([raw])
    check_sequence(parse_events(out))
    assert translator.outcome.failure != "internal"


# Numbers JSON can carry that break naive checks: ints past float range
# (math.isfinite overflows), float extremes, NaN and infinities (json.loads accepts
# NaN/Infinity). Ints too long for str() (Python's 4300-digit limit) are left to
# test_request.py: json.loads never returns them, and hypothesis cannot print them.
_numbers = (
    st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()
    | st.sampled_from(
        [
            10**400,
            -(10**400),
            2**63,
            -(2**63) - 1,
            1e308,
            -1e308,
            5e-324,
            float("nan"),
            float("inf"),
            float("-inf"),
        ]
    )
)

_json = st.recursive(
    st.none()
    | st.booleans()
    | _numbers
    | st.text(max_size=10)
    | st.sampled_from(["input_text", "function_call", "message", "user", "function"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "role",
                    "content",
                    "text",
                    "name",
                    "call_id",
                    "arguments",
                    "output",
                    "image_url",
                    "summary",
                    "model",
                    "input",
                    "temperature",
                    "top_p",
                    "max_output_tokens",
                    "x",
                ]
            )
            | st.text(max_size=5),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)


def _translate_or_400(body: object) -> None:
    error: TranslationError | None = None
    try:
        result = translate_request(body)
    except TranslationError as exc:
        error = exc
    if error is not None:
        assert error.status == 400
        json.dumps(error.body())
        return
    json.dumps(result.chat)
    assert result.chat["messages"]


@given(_json)
def test_request_translation_never_raises_on_arbitrary_json(body: Any) -> None:
    _translate_or_400(body)
    conversation_key(body)


@given(
    st.dictionaries(
        st.sampled_from(["temperature", "top_p", "max_output_tokens", "top_logprobs"]),
        _numbers | st.none(),
        min_size=1,
    )
)
def test_numeric_fields_never_raise(fields: dict[str, Any]) -> None:
    _translate_or_400({"model": "m", "input": "hi", **fields})


_MAIN = json.loads(
    (FIXTURES / "opencode-1.18.33-main-request.json").read_text(encoding="utf-8")
)["body"]
_RICH = request_body(
    input=[
        {"role": "system", "content": "s"},
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "q"},
                {"type": "input_image", "image_url": "u"},
            ],
        },
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "r"}]},
        {"type": "function_call", "call_id": "c", "name": "read", "arguments": "{}"},
        {
            "type": "function_call_output",
            "call_id": "c",
            "output": [{"type": "input_text", "text": "o"}],
        },
    ],
    text={"format": {"type": "json_schema", "name": "n", "schema": {}}},
    reasoning={"effort": "low"},
    tool_choice={"type": "function", "name": "read"},
    max_output_tokens=100,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


@given(st.sampled_from([_MAIN, _RICH]), st.data())
def test_wrong_shapes_anywhere_in_a_real_request_are_400s(
    base: dict[str, Any], data: st.DataObject
) -> None:
    body = copy.deepcopy(base)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(body)
        if not paths:
            break
        *parents, last = data.draw(st.sampled_from(paths))
        target: Any = body
        for key in parents:
            target = target[key]
        if data.draw(st.booleans()) and isinstance(target, dict):
            del target[last]
        else:
            target[last] = data.draw(_json)
    _translate_or_400(body)
