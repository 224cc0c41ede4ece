"""A non-streamed ``chat.completion`` → a Responses ``response`` object (pure).

The upstream answer is validated with pydantic wire models that allow unknown
fields (the portal adds its own); an answer that is not a chat completion, or that
carries an error object, becomes a ``TranslationError`` with HTTP 502. ``null`` is
read as absent wherever the stream translator reads it so: ``content``,
``reasoning_content``, ``refusal``, ``tool_calls``, a call's ``id``, and a function's
``name`` and ``arguments`` (both then ``""``).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from qwen_oauth_mitm.translate.errors import TranslationError, upstream_error_fields
from qwen_oauth_mitm.translate.ids import IdFactory
from qwen_oauth_mitm.translate.output import (
    Status,
    function_call_item,
    incomplete_reason,
    message_item,
    reasoning_item,
    response_object,
    translate_usage,
)
from qwen_oauth_mitm.translate.request import TranslatedRequest

__all__ = ["ChatCompletion", "parse_completion", "translate_response"]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


def _null_is_empty(value: object) -> object:
    return "" if value is None else value


type _Text = Annotated[str, BeforeValidator(_null_is_empty)]
"""A string where ``null`` means ``""``, as in the stream path (``or ""``)."""


class ChatFunction(_Wire):
    name: _Text = ""
    """Qwen always names the function; a missing or null name stays visible as ''."""
    arguments: _Text = ""
    """Missing or null: no arguments, ``""``."""


class ChatToolCall(_Wire):
    id: str | None = None
    function: ChatFunction


class ChatMessage(_Wire):
    content: str | None = None
    reasoning_content: str | None = None
    """Qwen's thinking text."""
    refusal: str | None = None
    tool_calls: list[ChatToolCall] | None = None


class ChatChoice(_Wire):
    index: int = 0
    message: ChatMessage
    finish_reason: str | None = None


class ChatCompletion(_Wire):
    """The part of an upstream ``chat.completion`` the translation reads."""

    choices: list[ChatChoice]
    usage: dict[str, Any] | None = None


def _upstream_failure(message: str, code: str = "server_error") -> TranslationError:
    return TranslationError(message, code=code, status=502, error_type="server_error")


def parse_completion(raw: bytes | str | dict[str, Any]) -> ChatCompletion:
    """Validate the upstream answer; raises TranslationError (502) if it is not one."""
    try:
        data: object = raw if isinstance(raw, dict) else json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise _upstream_failure("The upstream answer is not JSON.") from exc
    if isinstance(data, dict) and data.get("error") is not None:
        fields = upstream_error_fields(502, data)
        raise _upstream_failure(f"Upstream error: {fields['message']}", fields["code"])
    try:
        completion = ChatCompletion.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(body)"
        raise _upstream_failure(
            f"The upstream answer is not a chat completion: {where}: {first['msg']}"
        ) from exc
    if not completion.choices:
        raise _upstream_failure("The upstream answer has no choices.")
    return completion


def translate_response(
    raw: bytes | str | dict[str, Any],
    request: TranslatedRequest,
    *,
    ids: IdFactory,
    now: float,
) -> dict[str, Any]:
    """The Responses object for an upstream ``chat.completion``; 502 if not one."""
    completion = parse_completion(raw)
    choice = next(
        (c for c in completion.choices if c.index == 0), completion.choices[0]
    )
    message = choice.message
    output: list[dict[str, Any]] = []
    if message.reasoning_content:
        output.append(reasoning_item(ids("rs"), message.reasoning_content))
    text = (message.content or "") + (message.refusal or "")
    calls = message.tool_calls or []
    if text or not calls:
        output.append(message_item(ids("msg"), text, "completed"))
    for call in calls:
        item = function_call_item(
            ids("fc"),
            call.id or ids("call"),
            call.function.name,
            call.function.arguments,
            "completed",
        )
        output.append(item)
    reason = incomplete_reason(choice.finish_reason)
    status: Status = "completed" if reason is None else "incomplete"
    return response_object(
        request,
        response_id=ids("resp"),
        created_at=int(now),
        status=status,
        output=output,
        usage=translate_usage(completion.usage),
        incomplete_reason=reason,
    )
