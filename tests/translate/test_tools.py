"""Responses tools/tool_choice → chat tools/tool_choice."""

from __future__ import annotations

from typing import Any

import pytest

from qwen_oauth_mitm.translate import TranslationError
from qwen_oauth_mitm.translate.tools import translate_tools


def _tool(name: str, **extra: Any) -> dict[str, Any]:
    return {"type": "function", "name": name, **extra}


def _names(out: dict[str, Any]) -> list[str]:
    return [tool["function"]["name"] for tool in out["tools"]]


def test_flat_function_tools_are_nested() -> None:
    params = {"type": "object", "properties": {"p": {"type": "string"}}}
    out = translate_tools(
        [_tool("a", description="d", parameters=params, strict=True), _tool("b")],
        None,
    )
    assert out == {
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "a",
                    "description": "d",
                    "parameters": params,
                    "strict": True,
                },
            },
            {
                "type": "function",
                "function": {
                    "name": "b",
                    "parameters": {"type": "object", "properties": {}},
                },
            },
        ]
    }


def test_default_parameters_are_fresh_per_request() -> None:
    first = translate_tools([_tool("a"), _tool("b")], None)["tools"]
    first[0]["function"]["parameters"]["properties"]["x"] = {"type": "string"}
    first[0]["function"]["parameters"]["required"] = ["x"]
    assert first[1]["function"]["parameters"] == {"type": "object", "properties": {}}
    again = translate_tools([_tool("c")], None)["tools"]
    assert again[0]["function"]["parameters"] == {"type": "object", "properties": {}}


@pytest.mark.parametrize("mode", ["auto", "none", "required"])
def test_string_tool_choice(mode: str) -> None:
    assert translate_tools([_tool("a")], mode)["tool_choice"] == mode


def test_function_tool_choice_is_nested() -> None:
    out = translate_tools([_tool("a"), _tool("b")], {"type": "function", "name": "b"})
    assert out["tool_choice"] == {"type": "function", "function": {"name": "b"}}


def test_allowed_tools_filters_and_uses_its_mode() -> None:
    choice = {
        "type": "allowed_tools",
        "mode": "required",
        "tools": [{"type": "function", "name": "c"}, {"type": "function", "name": "a"}],
    }
    out = translate_tools([_tool("a"), _tool("b"), _tool("c")], choice)
    assert _names(out) == ["a", "c"]
    assert out["tool_choice"] == "required"


@pytest.mark.parametrize("choice", [None, "auto", "none"])
def test_no_tools_means_no_tool_fields(choice: str | None) -> None:
    assert translate_tools(None, choice) == {}
    assert translate_tools([], choice) == {}


@pytest.mark.parametrize(
    ("tools", "choice", "param", "code"),
    [
        ({}, None, "tools", "invalid_type"),
        ([1], None, "tools[0]", "invalid_type"),
        ([{"type": "web_search"}], None, "tools[0].type", "unsupported_value"),
        ([{"type": "file_search"}], None, "tools[0].type", "unsupported_value"),
        ([{"type": "mcp", "server_label": "x"}], None, "tools[0].type", None),
        ([{"type": "function"}], None, "tools[0].name", "invalid_type"),
        ([_tool("")], None, "tools[0].name", "invalid_value"),
        ([_tool("a"), _tool("a")], None, "tools[1].name", "invalid_value"),
        ([_tool("a", parameters=[])], None, "tools[0].parameters", "invalid_type"),
        ([_tool("a", description=1)], None, "tools[0].description", None),
        ([_tool("a", strict="yes")], None, "tools[0].strict", "invalid_type"),
        ([_tool("a")], "sometimes", "tool_choice", "invalid_value"),
        ([_tool("a")], 1, "tool_choice", "invalid_type"),
        ([_tool("a")], {"type": "function", "name": "z"}, "tool_choice.name", None),
        ([_tool("a")], {"type": "function"}, "tool_choice.name", "invalid_type"),
        ([_tool("a")], {"type": "web_search_preview"}, "tool_choice.type", None),
        (
            [_tool("a")],
            {"type": "allowed_tools", "mode": "none", "tools": []},
            "tool_choice.mode",
            None,
        ),
        (
            [_tool("a")],
            {"type": "allowed_tools", "mode": "auto"},
            "tool_choice.tools",
            "invalid_type",
        ),
        (
            [_tool("a")],
            {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "mcp"}]},
            "tool_choice.tools[0].type",
            None,
        ),
        (
            [_tool("a")],
            {
                "type": "allowed_tools",
                "mode": "auto",
                "tools": [{"type": "function", "name": "q"}],
            },
            "tool_choice.tools[0].name",
            None,
        ),
        (None, "required", "tool_choice", "invalid_value"),
    ],
)
def test_bad_tools_name_the_field(
    tools: object, choice: object, param: str, code: str | None
) -> None:
    with pytest.raises(TranslationError) as info:
        translate_tools(tools, choice)
    assert info.value.param == param
    if code is not None:
        assert info.value.code == code
