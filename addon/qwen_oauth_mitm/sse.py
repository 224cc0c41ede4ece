"""Server-sent events: an incremental decoder and an encoder (pure; no I/O).

The decoder follows the WHATWG HTML "event stream interpretation" rules
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation)
and takes bytes cut anywhere: inside ``\\r\\n``, inside a multi-byte UTF-8 character,
inside a field name. It keeps only the unfinished tail of the stream in a
``bytearray`` and scans each input byte once, so the work is linear in the input.

Departures from a browser, all deliberate: there is no reconnection (``retry`` is
parsed and reported, nothing more), and an event cut off by the end of the stream is
discarded, as the spec says, so callers must treat a missing terminator as truncation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["SSEDecoder", "ServerSentEvent", "encode_event", "encode_json_event"]

_BOM = b"\xef\xbb\xbf"
_CR = 0x0D
_LF = 0x0A


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event: ``event`` defaults to ``"message"`` as in the spec."""

    data: str
    event: str = "message"
    id: str = ""
    retry: int | None = None


class SSEDecoder:
    """Turns stream bytes into events; ``feed`` as bytes arrive, ``finish`` at EOF."""

    def __init__(self) -> None:
        self._buf = bytearray()
        # Bytes before this offset in _buf hold no line terminator (already scanned).
        self._scanned = 0
        # A line ended in CR; an LF opening the next chunk belongs to it.
        self._skip_lf = False
        self._bom_checked = False
        self._data: list[str] = []
        self._event = ""
        self._last_id = ""
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Decode ``chunk``; return the events it completed, in order."""
        if not chunk:
            return []
        buf = self._buf
        buf += chunk
        if not self._bom_checked and not self._strip_bom():
            return []
        events: list[ServerSentEvent] = []
        start = 0
        if self._skip_lf and buf and buf[0] == _LF:
            start = 1
        self._skip_lf = False
        pos = max(start, self._scanned)
        end = len(buf)
        find = buf.find
        # Next CR and LF at or after pos; -1 stays valid (none left), and each is
        # searched again only once pos has passed it, so every byte is scanned once.
        lf = find(b"\n", pos)
        cr = find(b"\r", pos)
        while lf >= 0 or cr >= 0:
            if cr >= 0 and (lf < 0 or cr < lf):
                eol, nxt = cr, cr + 1
                if nxt < end and buf[nxt] == _LF:
                    nxt += 1
                elif nxt == end:
                    self._skip_lf = True
            else:
                eol, nxt = lf, lf + 1
            event = self._line(bytes(buf[start:eol]))
            if event is not None:
                events.append(event)
            start = nxt
            if 0 <= lf < nxt:
                lf = find(b"\n", nxt)
            if 0 <= cr < nxt:
                cr = find(b"\r", nxt)
        del buf[:start]
        self._scanned = len(buf)
        return events

    def finish(self) -> list[ServerSentEvent]:
        """End of stream: an unterminated line or event is discarded (WHATWG)."""
        self._buf.clear()
        self._scanned = 0
        self._data = []
        self._event = ""
        return []

    def _strip_bom(self) -> bool:
        """Drop one leading UTF-8 BOM; False while the first bytes may still be one."""
        buf = self._buf
        if len(buf) < len(_BOM) and _BOM.startswith(buf):
            return False
        if buf.startswith(_BOM):
            del buf[: len(_BOM)]
        self._bom_checked = True
        return True

    def _line(self, raw: bytes) -> ServerSentEvent | None:
        if not raw:
            return self._dispatch()
        line = raw.decode("utf-8", "replace")
        if line[0] == ":":
            return None
        field, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id":
            if "\0" not in value:
                self._last_id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return ServerSentEvent(
            data="\n".join(data),
            event=event or "message",
            id=self._last_id,
            retry=self._retry,
        )


def _single_line(name: str, value: str) -> str:
    # A newline in event/id would end the field early and inject another one.
    if "\n" in value or "\r" in value:
        raise ValueError(f"SSE {name} must not contain a line break: {value!r}")
    return value


def encode_event(
    data: str, *, event: str | None = None, id: str | None = None
) -> bytes:
    """One event in wire form; multi-line data becomes several ``data:`` lines."""
    parts: list[str] = []
    if event is not None:
        parts.append(f"event: {_single_line('event', event)}\n")
    if id is not None:
        parts.append(f"id: {_single_line('id', id)}\n")
    for line in data.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        parts.append(f"data: {line}\n")
    parts.append("\n")
    return "".join(parts).encode("utf-8")


def encode_json_event(payload: Any, *, event: str | None = None) -> bytes:
    """Compact JSON on one ``data:`` line; ASCII-escaped, so any str is safe."""
    return encode_json_text_event(
        json.dumps(payload, separators=(",", ":")), event=event
    )


def encode_json_text_event(data: str, *, event: str | None = None) -> bytes:
    """:func:`encode_json_event` of JSON text already written by ``json.dumps``
    (ASCII-escaped, hence one line)."""
    if event is None:
        return b"data: " + data.encode("ascii") + b"\n\n"
    line = _single_line("event", event)
    return f"event: {line}\ndata: {data}\n\n".encode()
