"""The in-process relay: a tiny HTTP/1.1 server on 127.0.0.1 on mitmproxy's loop.

mitmproxy cannot resend a request inside one flow, nor run async code in a stream
callable, so the ``request`` hook rewrites a Qwen flow to
``http://127.0.0.1:<relay port>/<flow id>`` and the relay writes the answer back
chunk by chunk. The real work (rotation, refresh, retry, translation) is the
flow's job, which the hook has already started (see :mod:`.outbox`).

Deliberately minimal, but HTTP/1.1 keep-alive: a connection serves one request
after another, so mitmproxy reuses it and passes no ``Connection: close`` on to
the client (whose TLS connection to mitmproxy is then reused too). The request
body is read (``Content-Length`` or chunked) and ignored: the job, keyed by the
flow id in the path, carries it. Answers are ``Content-Length`` or chunked.

The connection is closed (never reused) when:

- the request says ``Connection: close`` (or is HTTP/1.0): its answer says so too;
- the answer was not framed cleanly: never started, a chunked answer that ends
  without its last chunk (a cut stream: mitmproxy sees the cut and the client a
  closed stream, never one that looks complete), fewer bytes than its
  ``Content-Length``, no length at all, or the handler failed;
- the request is malformed (a 400 with ``Connection: close``);
- nothing arrives for :data:`IDLE_TIMEOUT` seconds while waiting for a request.
  mitmproxy closes its relay connections with the client's connection anyway;
  the idle timeout only bounds what a forgotten connection holds. (A request
  mitmproxy sends at the very moment of that close would fail as a 502: the
  usual HTTP/1.1 keep-alive race, made rare by the long timeout.)

While a request is served, a watcher reads the connection to notice mitmproxy
closing it (the client went away): end of file cancels the handler. A byte that
arrives instead is a pipelined next request (mitmproxy never pipelines). Rather
than put it back, the relay finishes the current answer, says ``Connection:
close`` if its head is not sent yet, and closes the connection: the pipelined
request is never served, but never misread either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from qwen_oauth_mitm.tasks import spawn

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
FLUSH_AT = 64 * 1024
"""Bytes of coalesced writes that are sent without waiting for the turn's end."""
IDLE_TIMEOUT = 60.0
"""Seconds a relay connection may wait for its next request before it is closed."""


class ResponseWriter:
    """Writes one HTTP/1.1 answer to the relay's client (mitmproxy).

    Writes are coalesced: what is written during one turn of the event loop goes
    out as one socket write and, chunked, as one chunk, at the end of that turn
    (``call_soon``; no timer, so no added delay). The upstream client hands a
    burst (one socket read, many HTTP chunks) over chunk by chunk without
    yielding to the loop; written one by one, each would cost mitmproxy an
    event, a parse and a TLS record to the client. Two exceptions: the first
    body bytes go out at once (with the head), so the time to the first byte
    never waits for the rest of a burst to be translated; and :data:`FLUSH_AT`
    bytes pending are sent at once. :meth:`flush` sends
    at once; :meth:`end` and the relay (before it closes a connection) call it,
    so nothing written is ever left behind.
    """

    def __init__(
        self, writer: asyncio.StreamWriter, *, keep_alive: bool = True
    ) -> None:
        self._writer = writer
        self.keep_alive = keep_alive
        """False: the connection closes after this answer (said in its head if
        the head is still to be written)."""
        self.started = False
        self.chunked = False
        self.finished = False
        self.bytes_sent = 0
        self._length: int | None = None
        self._head = b""
        self._pending: list[bytes] = []
        self._scheduled: asyncio.Handle | None = None
        self._terminated = False
        self._pending_size = 0

    @property
    def reusable(self) -> bool:
        """Whether the connection may carry another request after this answer."""
        if not (self.keep_alive and self.started and self.finished):
            return False
        return self.chunked or self.bytes_sent == self._length

    async def start(
        self, status: int, headers: Iterable[tuple[str, str]], *, chunked: bool
    ) -> None:
        phrase = _phrase(status)
        lines = [f"HTTP/1.1 {status} {phrase}"]
        for k, v in headers:
            lines.append(f"{k}: {v}")
            if not chunked and k.lower() == "content-length":
                with contextlib.suppress(ValueError):
                    self._length = int(v)
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        elif self._length is None:
            self.keep_alive = False  # the body ends with the connection
        if not self.keep_alive:
            lines.append("Connection: close")
        self._head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.started, self.chunked = True, chunked
        self._schedule()
        await self._writer.drain()

    async def write(self, data: bytes) -> None:
        if not data:
            return  # an empty chunk would end a chunked body
        first = not self.bytes_sent
        self._pending.append(data)
        self._pending_size += len(data)
        self.bytes_sent += len(data)
        if first or self._pending_size >= FLUSH_AT:
            self.flush()  # the first bytes wait for nothing: time to first byte
        else:
            self._schedule()
        await self._writer.drain()  # returns at once unless the socket is full

    async def end(self) -> None:
        self.finished = True
        self.flush()
        await self._writer.drain()

    def flush(self) -> None:
        """Send what was written, now (the end of the body too, if :meth:`end`
        was called). Safe to call at any time, also on a closed connection."""
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        out = [self._head] if self._head else []
        self._head = b""
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._pending_size = 0
            out.append(b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data)
        if self.finished and self.chunked and not self._terminated:
            out.append(b"0\r\n\r\n")
            self._terminated = True
        if out and not self._writer.is_closing():
            self._writer.write(b"".join(out))

    def _schedule(self) -> None:
        if self._scheduled is None:
            loop = asyncio.get_running_loop()
            self._scheduled = loop.call_soon(self.flush)

    async def answer(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        extra: Iterable[tuple[str, str]] = (),
    ) -> None:
        """A whole answer with a ``Content-Length``."""
        headers = [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            *extra,
        ]
        await self.start(status, headers, chunked=False)
        await self.write(body)
        await self.end()


Handler = Callable[[str, ResponseWriter], Coroutine[Any, Any, None]]
"""Serves one request: the path (``/<flow id>``) and where to write."""


class Relay:
    """The relay server; :meth:`start` on mitmproxy's loop, :meth:`stop` at the end."""

    def __init__(self, handler: Handler, *, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self._handler = handler
        self._idle_timeout = idle_timeout
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int | None:
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> int:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", 0, limit=MAX_HEAD
        )
        port = self.port
        assert port is not None
        return port

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._conns):
            task.cancel()
        for task in list(self._conns):
            with contextlib.suppress(BaseException):
                await task
        await self._server.wait_closed()
        self._server = None

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Serve requests on one connection until it cannot or need not go on."""
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        out: ResponseWriter | None = None
        try:
            while True:
                try:
                    request = await _read_request(reader, self._idle_timeout)
                except TimeoutError:
                    log.debug("relay: idle connection closed")
                    return
                if request is None:
                    return  # closed between requests
                out = ResponseWriter(writer, keep_alive=request.keep_alive)
                if not request.path:
                    out.keep_alive = False
                    await out.answer(400, b'{"error":{"message":"bad relay request"}}')
                    return
                await self._serve_until_hangup(request.path, out, reader)
                if not out.reusable:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            log.debug("relay client went away")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("relay: unexpected error")
        finally:
            self._conns.discard(task)
            if out is not None:
                out.flush()  # what the handler wrote, before the connection ends
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_until_hangup(
        self, path: str, out: ResponseWriter, reader: asyncio.StreamReader
    ) -> None:
        """Run the handler; cancel it if mitmproxy closes the connection first.

        mitmproxy closes its connection to us when the client goes away, so a
        request waiting for a rate-limited account (or for a slow upstream) is
        abandoned instead of spending an account's quota for nobody. The watcher
        only runs while this request is served; a byte it reads (a pipelined
        request) closes the connection after this answer (see the module note).
        """
        current = asyncio.current_task()
        work = spawn(self._handler(path, out), name=f"relay {path}")
        hangup = spawn(reader.read(1), name=f"relay watch {path}")
        try:
            await asyncio.wait({work, hangup}, return_when=asyncio.FIRST_COMPLETED)
            if hangup.done() and not hangup.cancelled():
                if hangup.exception() is None and hangup.result():
                    log.debug("relay: bytes during request %s; closing after it", path)
                    out.keep_alive = False
                elif not work.done():
                    log.info("relay: the client went away; request %s abandoned", path)
                    out.keep_alive = False
                    work.cancel()
            try:
                await work
            except asyncio.CancelledError:
                if current is not None and current.cancelling():
                    raise
        finally:
            for task in (work, hangup):
                task.cancel()
            # asyncio.wait, not ``await task``: a cancellation of this task (the
            # relay stopping) must not be swallowed with theirs.
            await asyncio.wait({work, hangup})
            for task in (work, hangup):
                if not task.cancelled():
                    task.exception()  # retrieved: raised above or not ours to log
            # A byte the watcher read as it was cancelled: not ours to serve.
            if (
                not hangup.cancelled()
                and hangup.exception() is None
                and hangup.result()
            ):
                out.keep_alive = False


@dataclass(frozen=True)
class _Request:
    path: str
    """Empty if the request is malformed."""
    keep_alive: bool


async def _read_request(
    reader: asyncio.StreamReader, idle_timeout: float
) -> _Request | None:
    """Read one request (head and body); None if the connection closed first.

    ``TimeoutError`` if no head comes within ``idle_timeout``. The body has no
    deadline: it comes as fast as the client uploads (a body the addon collects
    reaches the relay only at the upload's end), and mitmproxy closes the
    connection should the client go away.
    """
    try:
        async with asyncio.timeout(idle_timeout):
            head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        return _Request("", keep_alive=False)
    except asyncio.IncompleteReadError as e:
        return _Request("", keep_alive=False) if e.partial.strip() else None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[1]:
        return _Request("", keep_alive=False)
    length = 0
    chunked = False
    tokens: set[str] = set()
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return _Request("", keep_alive=False)
        elif name == "transfer-encoding":
            if value.strip().lower() != "chunked":
                return _Request("", keep_alive=False)
            chunked = True
        elif name == "connection":
            tokens |= {t.strip().lower() for t in value.split(",")}
    if chunked:
        try:
            await _read_chunked(reader)
        except (ValueError, asyncio.LimitOverrunError):
            return _Request("", keep_alive=False)
    elif length:
        await reader.readexactly(length)
    keep_alive = parts[2] == "HTTP/1.1" and "close" not in tokens
    return _Request(parts[1], keep_alive)


async def _read_chunked(reader: asyncio.StreamReader) -> None:
    """Read (and drop) a chunked body, trailers included."""
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # a trailer
            return
        await reader.readexactly(size + 2)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Status"
