"""Is a 200 answer what was asked for? Judged on its opening, before the client
gets a byte of it (pure; no I/O).

Upstream failures do not all come with an error status: a gateway's HTML page, a
body cut into invalid JSON, a JSON error object (even a quota error) or an event
stream whose first event is one, all under HTTP 200. Judged on:

- a whole answer (a request that is not streamed, or a streamed one answered with
  a JSON or HTML document): the whole body. It must be a JSON object
  with a ``choices`` list; an ``error`` object makes it an error answer of the
  status it stands for (:func:`~qwen_oauth_mitm.rotation.embedded_error_status`),
  anything else is garbage (502: the service failed, not the account);
- an event stream: its first event with data (keep-alives and comments skipped). An
  error object, or data that is not JSON, is judged as above; a stream that ends
  before any data (or whose first is ``[DONE]``) is garbage. Later events are
  the stream translator's: by then the client has the start of the stream, so a
  failure becomes ``error`` + ``response.failed``.

A :class:`Refusal` is then handled as that error status (failover, cooldown, the
error to the client) with nothing sent to the client yet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from qwen_oauth_mitm.proxy.jobs import error_body
from qwen_oauth_mitm.rotation import embedded_error_status
from qwen_oauth_mitm.sse import ServerSentEvent, SSEDecoder

OPENING_LIMIT = 64 * 1024
"""Bytes of a stream read at most to find its first event (Qwen's is ~200)."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A 200 answer to be treated as an error answer."""

    status: int
    body: bytes
    """An error body (``{"error": {...}}``): the upstream's own, or ours."""
    outcome: str
    """For the attempts and the flow comment, e.g. ``200 not JSON``."""


def is_document(content_type: str | None) -> bool:
    """A JSON or HTML body: whole, not an event stream, whatever was asked for.
    (Anything else, a missing type included, is taken for the stream asked for.)"""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    return "json" in kind or "html" in kind


class StreamOpening:
    """Collects a stream's first bytes until its first event with data."""

    def __init__(self) -> None:
        self._decoder = SSEDecoder()
        self.data = bytearray()
        self.event: ServerSentEvent | None = None

    def feed(self, chunk: bytes) -> bool:
        """Add ``chunk``; True once the opening is complete (or long enough)."""
        self.data += chunk
        for event in self._decoder.feed(chunk):
            if event.data.strip() or event.event == "error":
                self.event = event
                return True
        return len(self.data) >= OPENING_LIMIT


def judge_stream(event: ServerSentEvent | None, *, ended: bool) -> Refusal | None:
    """The first event with data of an event stream; ``ended``: the stream ended
    before one. A stream that ends with none (empty, only comments, or ``[DONE]``
    first) is no answer: garbage. None past :data:`OPENING_LIMIT` without an event:
    the translator reports that one, from the bytes it is given."""
    if (event is None and ended) or (event is not None and event.data == "[DONE]"):
        message = "The upstream answered 200 with an event stream that had no data."
        return _garbage(message, "200 no events")
    if event is None:
        return None
    raw = event.data.encode()
    return _error_object(raw, _parse(raw), named_error=event.event == "error")


def judge_whole(body: bytes, *, stream: bool) -> tuple[object, Refusal | None]:
    """A whole answer: its parsed JSON, and a refusal if it is not a completion.
    ``stream``: the client asked for a stream (and this is not one)."""
    payload = _parse(body)
    refusal = _error_object(body, payload)
    if refusal is not None:
        return payload, refusal
    if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list):
        message = "The upstream answered 200 with JSON that is not a chat completion."
        return payload, _garbage(message, "200 not a completion")
    if stream:
        message = "The upstream answered a streamed request with no event stream."
        return payload, _garbage(message, "200 not streamed")
    return payload, None


_NOT_JSON = object()


def _parse(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return _NOT_JSON


def _error_object(
    raw: bytes, payload: object, *, named_error: bool = False
) -> Refusal | None:
    """An error object (or an SSE ``error`` event) as the error answer it is; data
    that is not JSON as garbage; None for anything else."""
    if payload is _NOT_JSON:
        message = "The upstream answered 200 with data that is not JSON."
        return _garbage(message, "200 not JSON")
    error = payload.get("error") if isinstance(payload, dict) else None
    if error is None and not named_error:
        return None
    status = embedded_error_status(payload)
    return Refusal(status, raw, f"200 with error {status}")


def _garbage(message: str, outcome: str) -> Refusal:
    return Refusal(502, error_body(message, code="bad_upstream_answer"), outcome)
