"""Streamed Chat Completions chunks → Responses SSE events: a sans-I/O state machine.

``StreamTranslator.feed(bytes)`` returns the encoded events the bytes completed;
``finish()`` is called once at end of stream. Events follow the chunk table of design
note responses-api.md §7 with every field both real clients require:

- ``response.created`` + ``response.in_progress`` on the first upstream event;
- reasoning (Qwen's ``reasoning_content``) and text are items opened on their first
  piece and closed (``*.done`` events) when the other kind, a tool call, or a
  ``finish_reason`` arrives; tool calls open once their name is known, keyed by
  upstream id first and index second (some servers put parallel calls all on index 0
  with different ids), and close at ``finish_reason`` with the full arguments;
- the terminal ``response.completed``/``response.incomplete`` waits for ``[DONE]`` or
  end of stream, so a usage chunk after the finish chunk is still counted;
- an upstream error object, unparsable data, or a stream that ends (``[DONE]`` or end
  of stream alike) without a ``finish_reason`` gives an ``error`` event and
  ``response.failed`` (failure ``truncated`` for the last). Qwen always sends the
  ``finish_reason`` on its last choice chunk, before the usage chunk and ``[DONE]``.
  After a terminal event all further input is ignored;
- keep-alives are not events: SSE comments (``: ping``) never reach us, and an event
  whose data is empty or whitespace (``data:``) is skipped, unless it is named
  ``error``.

No exception escapes ``feed``/``finish``: a bug here becomes a failed response with
``outcome.failure == "internal"`` rather than a crashed proxy flow.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from qwen_oauth_mitm.sse import SSEDecoder, encode_json_event, encode_json_text_event
from qwen_oauth_mitm.translate.errors import upstream_error_fields
from qwen_oauth_mitm.translate.ids import IdFactory, random_ids
from qwen_oauth_mitm.translate.output import (
    Status,
    echo_fields,
    incomplete_reason,
    response_json,
    translate_usage,
)
from qwen_oauth_mitm.translate.request import TranslatedRequest
from qwen_oauth_mitm.translate.stream_items import FunctionCall, TextItem

__all__ = ["Failure", "StreamOutcome", "StreamTranslator"]

type Failure = Literal["upstream_error", "truncated", "malformed", "internal"]

_OPENING = ("response.created", "response.in_progress")
"""The events every stream starts with, before any of the answer."""


class _Malformed(Exception):
    """An upstream chunk of the wrong shape; ends the stream as a failure."""


@dataclass(frozen=True, slots=True)
class StreamOutcome:
    """What the addon needs to know about a stream, at any point of it."""

    response_id: str
    status: Status
    """``in_progress`` until a terminal event has been emitted."""
    finish_reason: str | None
    """The upstream's ``finish_reason``, if one arrived."""
    usage: dict[str, Any] | None
    """Responses-shaped usage, or None while the upstream has sent none."""
    failure: Failure | None = None
    error_code: str | None = None
    error_message: str | None = None


class StreamTranslator:
    """One per upstream response; not thread-safe (mitmproxy calls it in order)."""

    def __init__(
        self, request: TranslatedRequest, *, now: float, ids: IdFactory = random_ids
    ) -> None:
        self._request = request
        self._ids = ids
        self._created_at = int(now)
        self._response_id = ids("resp")
        self._decoder = SSEDecoder()
        self._seq = 0
        self._out: list[bytes] = []
        self._items: list[TextItem | FunctionCall] = []
        self._text: TextItem | None = None
        self._calls: list[FunctionCall] = []
        self._calls_by_id: dict[str, FunctionCall] = {}
        self._calls_by_index: dict[int, FunctionCall] = {}
        self._started = False
        self._status: Status = "in_progress"
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] | None = None
        self._failure: Failure | None = None
        self._error: dict[str, str] | None = None
        self._echo: str | None = None
        self._opening: list[bytes] | None = None

    @property
    def outcome(self) -> StreamOutcome:
        error = self._error or {}
        return StreamOutcome(
            response_id=self._response_id,
            status=self._status,
            finish_reason=self._finish_reason,
            usage=None if self._usage is None else translate_usage(self._usage),
            failure=self._failure,
            error_code=error.get("code"),
            error_message=error.get("message"),
        )

    def prepare(self) -> None:
        """Render the opening events now: ``response.created`` and
        ``response.in_progress`` depend on the request alone, so the forwarder has
        them rendered while the upstream is still thinking, and the first answer
        bytes go out sooner (a large request's echo of tools and instructions is
        most of their cost). Nothing is emitted: the first event does that, as
        ever. Too late (the stream started) or failing: a no-op."""
        if self._started or self._opening is not None:
            return
        try:
            self._opening = self._render_opening()
        except Exception:  # see the module docstring: never crash the flow
            self._opening = None  # _start renders them (and reports a failure)

    def feed(self, chunk: bytes) -> list[bytes]:
        """Translate the next upstream bytes; returns the events they completed."""
        if self._status == "in_progress":
            self._guarded(self._feed, chunk)
        return self._take()

    def finish(self) -> list[bytes]:
        """End of the upstream stream: emit the terminal events if not yet sent."""
        if self._status == "in_progress":
            self._guarded(self._finish, b"")
        return self._take()

    def _guarded(self, step: Callable[[bytes], None], chunk: bytes) -> None:
        try:
            step(chunk)
        except _Malformed as exc:
            self._fail("malformed", "server_error", f"Malformed upstream stream: {exc}")
        except Exception as exc:  # see the module docstring: never crash the flow
            self._fail("internal", "server_error", f"Proxy translation error: {exc!r}")

    def _feed(self, chunk: bytes) -> None:
        for event in self._decoder.feed(chunk):
            self._on_event(event.data, event.event)
            if self._status != "in_progress":
                return

    def _finish(self, _: bytes) -> None:
        self._start()
        if self._finish_reason is None:
            message = "The upstream stream ended before the answer was finished."
            self._fail("truncated", "server_error", message)
        else:
            self._complete()

    # -- input ------------------------------------------------------------------

    def _on_event(self, data: str, event: str) -> None:
        if event != "error" and (not data or data.isspace()):
            return  # a keep-alive
        self._start()
        if data == "[DONE]":
            self._finish(b"")
            return
        if not data or data.isspace():
            message = "The upstream stream sent an error event without details."
            self._fail("upstream_error", "server_error", message)
            return
        try:
            chunk = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise _Malformed("data is not JSON") from exc
        if not isinstance(chunk, dict):
            raise _Malformed("data is not a JSON object")
        error = chunk.get("error")
        if error is not None or event == "error":
            fields = upstream_error_fields(500, chunk)
            self._fail("upstream_error", fields["code"], fields["message"])
            return
        choices = chunk.get("choices")
        if choices:
            if not isinstance(choices, list):
                raise _Malformed("choices is not an array")
            self._on_choice(_first_choice(choices))
        usage = chunk.get("usage")
        if usage is not None:
            if not isinstance(usage, dict):
                raise _Malformed("usage is not an object")
            self._usage = usage

    def _on_choice(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta")
        if delta:
            if not isinstance(delta, dict):
                raise _Malformed("delta is not an object")
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning:
                self._on_text("reasoning", _str(reasoning, "reasoning_content"))
            content = delta.get("content")
            if content:
                self._on_text("message", _str(content, "content"))
            refusal = delta.get("refusal")
            if refusal:
                # AI SDK 3.0.x ignores refusal events; as text the user sees it.
                self._on_text("message", _str(refusal, "refusal"))
            tool_calls = delta.get("tool_calls")
            if tool_calls:
                if not isinstance(tool_calls, list):
                    raise _Malformed("tool_calls is not an array")
                for entry in tool_calls:
                    self._on_tool_call(entry)
        finish = choice.get("finish_reason")
        if finish is not None and self._finish_reason is None:
            self._finish_reason = _str(finish, "finish_reason")
            self._close_all()

    def _on_text(self, kind: Literal["message", "reasoning"], piece: str) -> None:
        item = self._text
        if item is None or item.kind != kind:
            self._close_text()
            item = TextItem(kind, self._ids("msg" if kind == "message" else "rs"))
            item.output_index = len(self._items)
            self._items.append(item)
            self._text = item
            self._emit_all(item.open_events())
        self._emit(item.delta_event(piece))

    def _on_tool_call(self, entry: object) -> None:
        if not isinstance(entry, dict):
            raise _Malformed("a tool call is not an object")
        index = entry.get("index", 0)
        if not isinstance(index, int):
            raise _Malformed("tool call index is not an integer")
        upstream_id = entry.get("id") or None
        function = entry.get("function")
        if function is None:
            function = {}
        elif not isinstance(function, dict):
            raise _Malformed("tool call function is not an object")
        name = function.get("name") or None
        arguments = function.get("arguments") or ""
        call = self._call_for(index, upstream_id and _str(upstream_id, "id"))
        if name and not call.name:
            # Some servers repeat the name on every fragment: keep the first.
            call.name = _str(name, "function.name")
        if arguments:
            call.add_arguments(_str(arguments, "function.arguments"))
        if not call.announced and call.name:
            self._close_text()
            call.output_index = len(self._items)
            self._items.append(call)
            self._emit_all(call.open_events(self._ids))
        if call.announced:
            self._emit_all(call.flush_events())

    def _call_for(self, index: int, upstream_id: str | None) -> FunctionCall:
        call = self._calls_by_id.get(upstream_id) if upstream_id else None
        if call is None:
            call = self._calls_by_index.get(index)
            if call is None or call.closed or (upstream_id and call.upstream_id):
                call = FunctionCall(self._ids("fc"))
                self._calls.append(call)
            if upstream_id and not call.upstream_id and not call.announced:
                call.upstream_id = upstream_id
                self._calls_by_id[upstream_id] = call
        self._calls_by_index[index] = call
        return call

    # -- output -----------------------------------------------------------------

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        # The first events of all (every emit comes after this): sequence 0, 1.
        opening = self._opening or self._render_opening()
        self._out += opening
        self._seq = len(opening)

    def _close_text(self) -> None:
        if self._text is not None:
            self._emit_all(self._text.close_events())
            self._text = None

    def _close_all(self) -> None:
        self._close_text()
        for call in self._calls:
            if not call.closed:
                if not call.announced:
                    raise _Malformed("a tool call arrived without a function name")
                self._emit_all(call.close_events())

    def _complete(self) -> None:
        self._close_all()
        reason = incomplete_reason(self._finish_reason)
        self._status = "completed" if reason is None else "incomplete"
        response = self._response(
            self._status,
            incomplete_reason=reason,
            usage=translate_usage(self._usage),
        )
        self._emit_response(f"response.{self._status}", response)

    def _fail(self, failure: Failure, code: str, message: str) -> None:
        if self._status != "in_progress":
            return
        self._start()
        self._failure = failure
        self._error = {"code": code, "message": message}
        self._emit({"type": "error", "code": code, "message": message, "param": None})
        self._status = "failed"
        response = self._response(
            "failed", error=dict(self._error), usage=translate_usage(self._usage)
        )
        self._emit_response("response.failed", response)

    def _response(
        self,
        status: Status,
        *,
        incomplete_reason: str | None = None,
        error: dict[str, Any] | None = None,
        usage: dict[str, Any] | None = None,
    ) -> str:
        """The response object as JSON text (see :func:`response_json`)."""
        if self._echo is None:
            self._echo = echo_fields(self._request)
        return response_json(
            self._echo,
            response_id=self._response_id,
            created_at=self._created_at,
            status=status,
            output=[item.item() for item in self._items],
            usage=usage,
            error=error,
            incomplete_reason=incomplete_reason,
        )

    def _render_opening(self) -> list[bytes]:
        response = self._response("in_progress")
        return [
            self._response_event(kind, response, seq)
            for seq, kind in enumerate(_OPENING)
        ]

    def _emit_response(self, kind: str, response: str) -> None:
        self._out.append(self._response_event(kind, response, self._seq))
        self._seq += 1

    @staticmethod
    def _response_event(kind: str, response: str, seq: int) -> bytes:
        """``{"type": kind, "response": ..., "sequence_number": seq}``, as
        :meth:`_emit` would write it, around a response that is JSON text."""
        data = (
            f'{{"type":{json.dumps(kind)},"response":{response},'
            f'"sequence_number":{seq}}}'
        )
        return encode_json_text_event(data, event=kind)

    def _emit(self, payload: dict[str, Any]) -> None:
        payload["sequence_number"] = self._seq
        self._seq += 1
        self._out.append(encode_json_event(payload, event=payload["type"]))

    def _emit_all(self, payloads: list[dict[str, Any]]) -> None:
        for payload in payloads:
            self._emit(payload)

    def _take(self) -> list[bytes]:
        out, self._out = self._out, []
        return out


def _first_choice(choices: list[Any]) -> dict[str, Any]:
    for choice in choices:
        if not isinstance(choice, dict):
            raise _Malformed("a choice is not an object")
        if choice.get("index", 0) == 0:
            return choice
    raise _Malformed("no choice with index 0")


def _str(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise _Malformed(f"{field} is not a string")
    return value
