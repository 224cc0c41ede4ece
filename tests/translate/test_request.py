"""translate_request: top-level fields, the real OpenCode requests, and every 400."""

from __future__ import annotations

import json
from typing import Any

import pytest

from qwen_oauth_mitm.translate import MAX_OUTPUT_TOKENS, TranslationError
from qwen_oauth_mitm.translate import translate_request as _translate

from .helpers import FIXTURES


def _opencode(name: str) -> dict[str, Any]:
    path = FIXTURES / f"opencode-1.18.33-{name}-request.json"
    body: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))["body"]
    return body


def _body(**extra: Any) -> dict[str, Any]:
    return {"model": "coder-model", "input": "hi", **extra}


def _chat(**extra: Any) -> dict[str, Any]:
    return _translate(_body(**extra)).chat


def _number_id(value: object) -> str | None:
    # pytest's default id would str() ints past Python's 4300-digit limit.
    if isinstance(value, int) and value.bit_length() > 64:
        return f"{'-' if value < 0 else ''}2**{value.bit_length()}"
    return None


def _error(body: object) -> TranslationError:
    with pytest.raises(TranslationError) as info:
        _translate(body)
    assert info.value.status == 400
    return info.value


def test_opencode_main_request() -> None:
    body = _opencode("main")
    result = _translate(body)
    chat = result.chat
    assert chat["model"] == "coder-model"
    assert chat["stream"] is True
    assert chat["stream_options"] == {"include_usage": True}
    assert chat["max_tokens"] == 32000
    assert chat["tool_choice"] == "auto"
    names = [tool["function"]["name"] for tool in chat["tools"]]
    assert names == [tool["name"] for tool in body["tools"]]
    first = chat["tools"][0]
    assert first["type"] == "function"
    assert first["function"]["parameters"] == body["tools"][0]["parameters"]
    assert first["function"]["strict"] is False
    system, user = chat["messages"]
    assert system["role"] == "system"
    assert system["content"] == [
        {
            "type": "text",
            "text": body["input"][0]["content"],
            "cache_control": {"type": "ephemeral"},
        }
    ]
    assert user == {"role": "user", "content": '"Say hello"'}
    # Dropped upstream, echoed back.
    assert "store" not in chat
    assert "prompt_cache_key" not in chat
    assert result.echo["prompt_cache_key"] == body["prompt_cache_key"]
    assert result.echo["store"] is False
    assert result.echo["tools"] == body["tools"]
    assert result.echo["max_output_tokens"] == 32000
    assert result.model == "coder-model"
    assert result.stream is True


def test_opencode_title_request() -> None:
    chat = _translate(_opencode("title")).chat
    assert [m["role"] for m in chat["messages"]] == ["system", "user", "user"]
    assert "tools" not in chat
    assert "tool_choice" not in chat


def test_upstream_model_is_a_parameter() -> None:
    result = _translate(_body(model="my-alias"), upstream_model="coder-model")
    assert result.chat["model"] == "coder-model"
    assert result.model == "my-alias"
    assert result.echo["model"] == "my-alias"


@pytest.mark.parametrize(
    ("asked", "sent"), [(1, 1), (32000, 32000), (65536, 65536), (10**9, 65536)]
)
def test_max_output_tokens_is_clamped(asked: int, sent: int) -> None:
    assert _chat(max_output_tokens=asked)["max_tokens"] == sent
    assert MAX_OUTPUT_TOKENS == 65536


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 10**400),
        ("temperature", -(10**400)),
        ("temperature", 1e308),
        ("temperature", float("inf")),
        ("temperature", float("-inf")),
        ("temperature", float("nan")),
        ("temperature", 10**5000),
        ("top_p", -(10**400)),
        ("top_p", 10**400),
        ("top_p", -1e308),
        ("top_p", float("nan")),
        ("max_output_tokens", -(10**400)),
        ("max_output_tokens", -(10**5000)),
    ],
    ids=_number_id,
)
def test_huge_and_non_finite_numbers_are_400s(field: str, value: object) -> None:
    error = _error(_body(**{field: value}))
    assert error.param == field
    assert error.code == "invalid_value"
    assert field in error.message
    assert len(error.message) < 200


@pytest.mark.parametrize("value", [10**400, 10**5000, 2**63, 2**64 + 1], ids=_number_id)
def test_huge_max_output_tokens_is_clamped(value: int) -> None:
    assert _chat(max_output_tokens=value)["max_tokens"] == MAX_OUTPUT_TOKENS


@pytest.mark.parametrize(("field", "value"), [("temperature", 2), ("top_p", 0)])
def test_integer_sampling_values_at_the_bounds_pass(field: str, value: int) -> None:
    assert _chat(**{field: value})[field] == value


def test_max_tokens_limit_is_a_parameter() -> None:
    body = _body(max_output_tokens=5000)
    assert _translate(body, max_tokens_limit=4096).chat["max_tokens"] == 4096


def test_sampling_and_user_pass_through() -> None:
    chat = _chat(temperature=0.2, top_p=1, user="u1")
    assert (chat["temperature"], chat["top_p"], chat["user"]) == (0.2, 1, "u1")


def test_no_stream_means_no_stream_options() -> None:
    chat = _chat(stream=False)
    assert "stream" not in chat
    assert "stream_options" not in chat
    assert _translate(_body()).stream is False


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ({"type": "text"}, None),
        ({"type": "json_object"}, {"type": "json_object"}),
        (
            {
                "type": "json_schema",
                "name": "r",
                "schema": {"type": "object"},
                "strict": True,
                "description": "d",
            },
            {
                "type": "json_schema",
                "json_schema": {
                    "name": "r",
                    "schema": {"type": "object"},
                    "description": "d",
                    "strict": True,
                },
            },
        ),
    ],
)
def test_text_format(fmt: dict[str, Any], expected: dict[str, Any] | None) -> None:
    result = _translate(_body(text={"format": fmt, "verbosity": "low"}))
    assert result.chat.get("response_format") == expected
    assert result.echo["text"] == {"format": fmt, "verbosity": "low"}


@pytest.mark.parametrize(
    ("effort", "expected"),
    [
        ("none", {"enable_thinking": False}),
        ("minimal", {"enable_thinking": True, "thinking_budget": 1024}),
        ("low", {"enable_thinking": True, "thinking_budget": 1024}),
        ("medium", {"enable_thinking": True, "thinking_budget": 8192}),
        ("high", {"enable_thinking": True}),
        ("xhigh", {"enable_thinking": True}),
        (None, {}),
    ],
)
def test_reasoning_effort_maps_to_qwen_thinking(
    effort: str | None, expected: dict[str, Any]
) -> None:
    result = _translate(_body(reasoning={"effort": effort, "summary": "auto"}))
    thinking = {
        k: v
        for k, v in result.chat.items()
        if k in ("enable_thinking", "thinking_budget")
    }
    assert thinking == expected
    assert result.echo["reasoning"] == {"effort": effort, "summary": "auto"}


def test_echo_defaults() -> None:
    echo = _translate(_body()).echo
    assert echo["tools"] == []
    assert echo["tool_choice"] == "auto"
    assert echo["parallel_tool_calls"] is True
    assert echo["metadata"] == {}
    assert echo["text"] == {"format": {"type": "text"}}
    assert echo["truncation"] == "disabled"
    assert echo["previous_response_id"] is None


@pytest.mark.parametrize(
    "extra",
    [
        {"store": True},
        {"metadata": {"a": "b"}},
        {"include": ["reasoning.encrypted_content"]},
        {"prompt_cache_key": "k"},
        {"service_tier": "auto"},
        {"truncation": "auto"},
        {"safety_identifier": "s"},
        {"top_logprobs": 2},
        {"max_tool_calls": 3},
        {"stream_options": {"include_obfuscation": False}},
        {"prompt_cache_retention": "24h"},
        {"background": False},
    ],
)
def test_fields_without_upstream_meaning_are_dropped(extra: dict[str, Any]) -> None:
    assert _chat(**extra) == _chat()


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ([], None, "invalid_value"),
        ("text", None, "invalid_value"),
        ({"input": "hi"}, "model", "invalid_type"),
        ({"model": "", "input": "hi"}, "model", "invalid_value"),
        ({"model": 5, "input": "hi"}, "model", "invalid_type"),
        ({"model": "m"}, "input", "missing_required_parameter"),
        ({"model": "m", "input": []}, "input", "empty_array"),
        (_body(nonsense=1), "nonsense", "unknown_parameter"),
        (_body(previous_response_id="resp_1"), "previous_response_id", None),
        (_body(conversation="conv_1"), "conversation", None),
        (_body(prompt={"id": "p"}), "prompt", None),
        (_body(background=True), "background", None),
        (_body(stream="yes"), "stream", "invalid_type"),
        (_body(store="no"), "store", "invalid_type"),
        (_body(metadata=[]), "metadata", "invalid_type"),
        (_body(top_logprobs=True), "top_logprobs", "invalid_type"),
        (_body(instructions=1), "instructions", "invalid_type"),
        (_body(max_output_tokens=0), "max_output_tokens", "invalid_value"),
        (_body(max_output_tokens=1.5), "max_output_tokens", "invalid_type"),
        (_body(max_output_tokens=True), "max_output_tokens", "invalid_type"),
        (_body(temperature=3), "temperature", "invalid_value"),
        (_body(temperature=float("nan")), "temperature", "invalid_value"),
        (_body(temperature="1"), "temperature", "invalid_type"),
        (_body(top_p=1.5), "top_p", "invalid_value"),
        (_body(user=1), "user", "invalid_type"),
        (_body(parallel_tool_calls=1), "parallel_tool_calls", "invalid_type"),
        (_body(text="json"), "text", "invalid_type"),
        (_body(text={"format": {"type": "xml"}}), "text.format.type", None),
        (_body(text={"format": {"type": "json_schema"}}), "text.format.name", None),
        (
            _body(text={"format": {"type": "json_schema", "name": "n"}}),
            "text.format.schema",
            None,
        ),
        (_body(text={"verbosity": "max"}), "text.verbosity", None),
        (_body(reasoning="high"), "reasoning", "invalid_type"),
        (_body(reasoning={"effort": "max"}), "reasoning.effort", None),
        (_body(reasoning={"summary": 1}), "reasoning.summary", "invalid_type"),
    ],
)
def test_bad_requests_name_the_field(
    body: object, param: str | None, code: str | None
) -> None:
    error = _error(body)
    assert error.param == param
    if code is not None:
        assert error.code == code
    assert error.body() == {
        "error": {
            "message": error.message,
            "type": "invalid_request_error",
            "param": param,
            "code": error.code,
        }
    }
    if param is not None:
        assert param.split(".")[0] in error.message
