"""The in-process relay: a tiny HTTP/1.1 server on 127.0.0.1 on mitmproxy's loop.

mitmproxy cannot resend a request inside one flow, nor run async code in a stream
callable, so the ``request`` hook rewrites a Qwen flow to
``http://127.0.0.1:<relay port>/<flow id>`` and the relay does the real work
(rotation, refresh, retry, translation), writing its answer back chunk by chunk.

Deliberately minimal: one request per connection (``Connection: close``); the
request body is ignored (the job, keyed by the flow id in the path, carries it);
answers are ``Content-Length`` or chunked. A chunked answer that ends without its
last chunk tells mitmproxy the stream was cut (the client sees a closed stream,
never one that looks complete).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterable
from http import HTTPStatus
from typing import Any

from qwen_oauth_mitm.tasks import spawn

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024


class ResponseWriter:
    """Writes one HTTP/1.1 answer to the relay's client (mitmproxy)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self.started = False
        self.chunked = False
        self.finished = False
        self.bytes_sent = 0

    async def start(
        self, status: int, headers: Iterable[tuple[str, str]], *, chunked: bool
    ) -> None:
        phrase = _phrase(status)
        lines = [f"HTTP/1.1 {status} {phrase}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        lines.append("Connection: close")
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        self.started, self.chunked = True, chunked
        await self._writer.drain()

    async def write(self, data: bytes) -> None:
        if not data:
            return  # an empty chunk would end a chunked body
        if self.chunked:
            self._writer.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self._writer.write(data)
        self.bytes_sent += len(data)
        await self._writer.drain()

    async def end(self) -> None:
        if self.chunked:
            self._writer.write(b"0\r\n\r\n")
        self.finished = True
        await self._writer.drain()

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

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
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
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        out = ResponseWriter(writer)
        try:
            path = await _read_request(reader)
            if path is None:
                await out.answer(400, b'{"error":{"message":"bad relay request"}}')
            else:
                await self._serve_until_hangup(path, out, reader)
        except (ConnectionError, asyncio.IncompleteReadError):
            log.debug("relay client went away")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("relay: unexpected error")
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_until_hangup(
        self, path: str, out: ResponseWriter, reader: asyncio.StreamReader
    ) -> None:
        """Run the handler; cancel it if mitmproxy closes the connection first.

        mitmproxy closes its connection to us when the client goes away, so a
        request waiting for a rate-limited account (or for a slow upstream) is
        abandoned instead of spending an account's quota for nobody.
        """
        work = spawn(self._handler(path, out), name=f"relay {path}")
        hangup = spawn(reader.read(1), name=f"relay watch {path}")
        try:
            await asyncio.wait({work, hangup}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                log.info("relay: the client went away; request %s abandoned", path)
                work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
        finally:
            for task in (work, hangup):
                task.cancel()
            for task in (work, hangup):
                with contextlib.suppress(BaseException):
                    await task


async def _read_request(reader: asyncio.StreamReader) -> str | None:
    """Read one request (head and body); return its path, or None if malformed."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.LimitOverrunError, asyncio.IncompleteReadError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return None
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return None
    if length:
        await reader.readexactly(length)
    return parts[1]


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Status"
