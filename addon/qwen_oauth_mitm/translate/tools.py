"""Responses ``tools``/``tool_choice`` → their Chat Completions forms (pure).

Only function tools exist upstream: hosted tools (web search, file search, code
interpreter, MCP…) are a 400 rather than being silently dropped, since the model
would otherwise be told nothing about a tool the client expects it to use.
"""

from __future__ import annotations

from typing import Any

from qwen_oauth_mitm.translate._check import (
    as_dict,
    as_list,
    as_str,
    fail,
    one_of,
    opt_bool,
    opt_str,
    unsupported,
)

__all__ = ["translate_tools"]

_MODES = ("auto", "none", "required")


def _empty_parameters() -> dict[str, Any]:
    """A fresh schema each time: callers may edit the request they get back."""
    return {"type": "object", "properties": {}}


def translate_tools(tools: object, tool_choice: object) -> dict[str, Any]:
    """Chat ``tools`` and ``tool_choice`` keys (none of them when there are no tools).

    ``allowed_tools`` narrows ``tools`` to the names it lists and becomes its mode.
    """
    nested = [] if tools is None else _function_tools(tools)
    names = [tool["function"]["name"] for tool in nested]
    choice: str | dict[str, Any] | None = None
    if tool_choice is not None:
        choice, allowed = _tool_choice(tool_choice, names)
        if allowed is not None:
            nested = [tool for tool in nested if tool["function"]["name"] in allowed]
    if not nested:
        # Chat APIs reject tool_choice without tools; "none" means the same anyway.
        if choice not in (None, "auto", "none"):
            fail("'tool_choice' requires at least one function tool.", "tool_choice")
        return {}
    out: dict[str, Any] = {"tools": nested}
    if choice is not None:
        out["tool_choice"] = choice
    return out


def _function_tools(tools: object) -> list[dict[str, Any]]:
    nested = []
    seen: set[str] = set()
    for index, raw in enumerate(as_list(tools, "tools")):
        param = f"tools[{index}]"
        tool = as_dict(raw, param)
        kind = as_str(tool.get("type"), f"{param}.type")
        if kind != "function":
            unsupported(
                f"Tool type {kind!r} is not supported: the Qwen portal runs only "
                "function tools.",
                f"{param}.type",
            )
        name = as_str(tool.get("name"), f"{param}.name")
        if not name or name in seen:
            fail(f"Tool names must be non-empty and unique: {name!r}.", f"{param}.name")
        seen.add(name)
        function: dict[str, Any] = {"name": name}
        description = opt_str(tool.get("description"), f"{param}.description")
        if description is not None:
            function["description"] = description
        parameters = tool.get("parameters")
        function["parameters"] = (
            _empty_parameters()
            if parameters is None
            else as_dict(parameters, f"{param}.parameters")
        )
        strict = opt_bool(tool.get("strict"), f"{param}.strict")
        if strict is not None:
            function["strict"] = strict
        nested.append({"type": "function", "function": function})
    return nested


def _tool_choice(
    value: object, names: list[str]
) -> tuple[str | dict[str, Any], set[str] | None]:
    """The chat ``tool_choice`` and, for ``allowed_tools``, the names it allows."""
    if isinstance(value, str):
        return one_of(value, "tool_choice", _MODES), None
    choice = as_dict(value, "tool_choice")
    kind = as_str(choice.get("type"), "tool_choice.type")
    if kind == "function":
        name = as_str(choice.get("name"), "tool_choice.name")
        _known(name, names, "tool_choice.name")
        return {"type": "function", "function": {"name": name}}, None
    if kind == "allowed_tools":
        mode = as_str(choice.get("mode"), "tool_choice.mode")
        one_of(mode, "tool_choice.mode", ("auto", "required"))
        allowed: set[str] = set()
        for index, raw in enumerate(as_list(choice.get("tools"), "tool_choice.tools")):
            param = f"tool_choice.tools[{index}]"
            entry = as_dict(raw, param)
            if as_str(entry.get("type"), f"{param}.type") != "function":
                unsupported("Only function tools can be allowed.", f"{param}.type")
            allowed.add(
                _known(
                    as_str(entry.get("name"), f"{param}.name"), names, f"{param}.name"
                )
            )
        return mode, allowed
    unsupported(
        f"tool_choice type {kind!r} is not supported: only function tools exist "
        "upstream.",
        "tool_choice.type",
    )


def _known(name: str, names: list[str], param: str) -> str:
    if name not in names:
        fail(f"Tool {name!r} named in '{param}' is not in 'tools'.", param)
    return name
