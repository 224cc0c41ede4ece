"""``POST /v1/responses`` body → ``POST /v1/chat/completions`` body (pure).

``translate_request`` follows the request table of design note responses-api.md §7
and raises ``TranslationError`` (HTTP 400, ``param`` naming the field) for anything it
cannot translate faithfully; no other exception escapes it, whatever the JSON.

Fields that mean nothing upstream (``store``, ``metadata``, ``include``,
``prompt_cache_key``, ``service_tier``, ``truncation``…) are type-checked, dropped,
and kept in ``TranslatedRequest.echo`` for the response object. Fields that need
server-side state this proxy does not keep (``previous_response_id``,
``conversation``, ``prompt``, ``background``) are a 400, as is an unknown field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qwen_oauth_mitm.translate._check import (
    as_dict,
    as_str,
    fail,
    one_of,
    opt_bool,
    opt_int,
    opt_number,
    opt_of,
    opt_str,
    require_model,
    unsupported,
)
from qwen_oauth_mitm.translate.errors import TranslationError
from qwen_oauth_mitm.translate.messages import translate_input
from qwen_oauth_mitm.translate.tools import translate_tools

__all__ = ["MAX_OUTPUT_TOKENS", "TranslatedRequest", "translate_request"]

MAX_OUTPUT_TOKENS = 65_536
"""coder-model's output limit (design note qwen-oauth.md)."""

# Dropped before going upstream, echoed in the response object; value: its JSON type.
_ECHO_ONLY: dict[str, type] = {
    "store": bool,
    "metadata": dict,
    "include": list,
    "prompt_cache_key": str,
    "prompt_cache_retention": str,
    "prompt_cache_options": dict,
    "service_tier": str,
    "truncation": str,
    "safety_identifier": str,
    "top_logprobs": int,
    "max_tool_calls": int,
    "stream_options": dict,
    "background_options": dict,
    "context_management": list,
    "access_programs": dict,
    "image": dict,
    "moderation": dict,
}
_STATEFUL = ("previous_response_id", "conversation", "prompt")
_TRANSLATED = frozenset(
    {
        "model",
        "input",
        "instructions",
        "stream",
        "max_output_tokens",
        "temperature",
        "top_p",
        "parallel_tool_calls",
        "user",
        "tools",
        "tool_choice",
        "text",
        "reasoning",
        "background",
        *_STATEFUL,
    }
)
_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
# Qwen's thinking switch, as peers map OpenAI's effort (design note qwen-oauth.md).
_THINKING: dict[str, dict[str, Any]] = {
    "none": {"enable_thinking": False},
    "minimal": {"enable_thinking": True, "thinking_budget": 1024},
    "low": {"enable_thinking": True, "thinking_budget": 1024},
    "medium": {"enable_thinking": True, "thinking_budget": 8192},
    "high": {"enable_thinking": True},
    "xhigh": {"enable_thinking": True},
}


@dataclass(frozen=True, slots=True)
class TranslatedRequest:
    """What ``translate_request`` returns."""

    chat: dict[str, Any]
    """The Chat Completions body to send upstream."""
    model: str
    """The model the client asked for; the response object names it."""
    stream: bool
    """Whether the client asked for a stream (``chat["stream"]`` says the same)."""
    echo: dict[str, Any]
    """Request fields the response object repeats (tools, tool_choice, store…)."""


def translate_request(
    body: object,
    *,
    upstream_model: str | None = None,
    max_tokens_limit: int = MAX_OUTPUT_TOKENS,
) -> TranslatedRequest:
    """Translate a Responses request; ``upstream_model`` defaults to the one asked.

    Raises ``TranslationError`` (status 400) naming the offending field.
    """
    if not isinstance(body, dict):
        raise TranslationError("The request body must be a JSON object.")
    _reject_unsupported(body)
    model = require_model(body, "input")
    instructions = opt_str(body.get("instructions"), "instructions")
    messages = translate_input(body["input"], instructions)
    if not messages:
        fail("'input' must contain at least one item.", "input", "empty_array")
    stream = bool(opt_bool(body.get("stream"), "stream"))
    chat: dict[str, Any] = {"model": upstream_model or model, "messages": messages}
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    chat.update(_sampling(body, max_tokens_limit))
    chat.update(translate_tools(body.get("tools"), body.get("tool_choice")))
    parallel = opt_bool(body.get("parallel_tool_calls"), "parallel_tool_calls")
    if parallel is not None and "tools" in chat:
        chat["parallel_tool_calls"] = parallel
    text = _text_config(body.get("text"), chat)
    reasoning = _reasoning(body.get("reasoning"), chat)
    echo = _echo(body, instructions=instructions, text=text, reasoning=reasoning)
    return TranslatedRequest(chat=chat, model=model, stream=stream, echo=echo)


def _reject_unsupported(body: dict[str, Any]) -> None:
    # The body's keys, not every known one: a request names a few of the many.
    for key, value in body.items():
        kind = _ECHO_ONLY.get(key)
        if kind is not None:
            opt_of(value, key, kind)
        elif key not in _TRANSLATED:
            fail(f"Unknown parameter: '{key}'.", key, "unknown_parameter")
    for key in _STATEFUL:
        if body.get(key) is not None:
            unsupported(
                f"'{key}' is not supported: this proxy keeps no server-side state; "
                "send the whole conversation in 'input' (store=false).",
                key,
            )
    if opt_bool(body.get("background"), "background"):
        unsupported("'background' responses are not supported here.", "background")


def _sampling(body: dict[str, Any], max_tokens_limit: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    max_out = opt_int(body.get("max_output_tokens"), "max_output_tokens", minimum=1)
    if max_out is not None:
        out["max_tokens"] = min(max_out, max_tokens_limit)
    temperature = opt_number(body.get("temperature"), "temperature", low=0, high=2)
    if temperature is not None:
        out["temperature"] = temperature
    top_p = opt_number(body.get("top_p"), "top_p", low=0, high=1)
    if top_p is not None:
        out["top_p"] = top_p
    user = opt_str(body.get("user"), "user")
    if user is not None:
        out["user"] = user
    return out


def _text_config(value: object, chat: dict[str, Any]) -> dict[str, Any]:
    """``text.format`` → ``response_format``; returns the ``text`` echo."""
    if value is None:
        return {"format": {"type": "text"}}
    text = as_dict(value, "text")
    verbosity = opt_str(text.get("verbosity"), "text.verbosity")
    if verbosity is not None:
        one_of(verbosity, "text.verbosity", ("low", "medium", "high"))
    fmt_raw = text.get("format")
    fmt = {"type": "text"} if fmt_raw is None else as_dict(fmt_raw, "text.format")
    kind = as_str(fmt.get("type"), "text.format.type")
    one_of(kind, "text.format.type", ("text", "json_schema", "json_object"))
    if kind == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif kind == "json_schema":
        schema: dict[str, Any] = {
            "name": as_str(fmt.get("name"), "text.format.name"),
            "schema": as_dict(fmt.get("schema"), "text.format.schema"),
        }
        description = opt_str(fmt.get("description"), "text.format.description")
        if description is not None:
            schema["description"] = description
        strict = opt_bool(fmt.get("strict"), "text.format.strict")
        if strict is not None:
            schema["strict"] = strict
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    echo: dict[str, Any] = {"format": fmt}
    if verbosity is not None:
        echo["verbosity"] = verbosity
    return echo


def _reasoning(value: object, chat: dict[str, Any]) -> dict[str, Any]:
    """``reasoning.effort`` → Qwen's ``enable_thinking``/``thinking_budget``."""
    if value is None:
        return {"effort": None, "summary": None}
    reasoning = as_dict(value, "reasoning")
    effort = opt_str(reasoning.get("effort"), "reasoning.effort")
    if effort is not None:
        chat.update(_THINKING[one_of(effort, "reasoning.effort", _EFFORTS)])
    summary = opt_str(reasoning.get("summary"), "reasoning.summary")
    if summary is not None:
        one_of(summary, "reasoning.summary", ("auto", "concise", "detailed"))
    generate = opt_str(reasoning.get("generate_summary"), "reasoning.generate_summary")
    return {"effort": effort, "summary": summary or generate}


def _echo(
    body: dict[str, Any],
    *,
    instructions: str | None,
    text: dict[str, Any],
    reasoning: dict[str, Any],
) -> dict[str, Any]:
    """The request's part of the response object (openai-python ``Response``)."""
    parallel = body.get("parallel_tool_calls")
    return {
        "background": False,
        "instructions": instructions,
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "metadata": body.get("metadata") or {},
        "model": body["model"],
        "parallel_tool_calls": True if parallel is None else parallel,
        "previous_response_id": None,
        "prompt_cache_key": body.get("prompt_cache_key"),
        "prompt_cache_retention": body.get("prompt_cache_retention"),
        "reasoning": reasoning,
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": body.get("service_tier") or "default",
        "store": bool(body.get("store")),
        "temperature": body.get("temperature"),
        "text": text,
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": body.get("tools") or [],
        "top_logprobs": body.get("top_logprobs"),
        "top_p": body.get("top_p"),
        "truncation": body.get("truncation") or "disabled",
        "user": body.get("user"),
    }
