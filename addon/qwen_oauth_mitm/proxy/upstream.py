"""A lean HTTP/1.1 client for the relay's upstream requests (llhttp, asyncio streams).

Why not httpx: on the relay's hot path its layers (httpx, httpcore, anyio) cost
~1.2 ms per request before and after the upstream's work, and ~30 µs per streamed
chunk (issue #8). This client does only what the forwarder needs: one request, a
streamed answer, keep-alive. The request head is ours (:func:`.http11.build_request`:
h11's per-header checks and serializing were ~135 µs of the time to first byte
inside mitmdump); the answer is parsed by llhttp (:mod:`.answer`: h11, told of
the request and parsing the head and first chunk, was ~170 µs more). The I/O is
asyncio streams, the request head and body going out in one socket write. What
needs no I/O (URLs, the request head, content codings, the answer's parsing) is in
:mod:`.http11` and :mod:`.answer`. ``HEAD`` is refused (:mod:`.answer` tells why):
the forwarder sends only ``POST``.

Timeouts are per request (the forwarder passes those of the config of the moment):
connecting (DNS, TCP, TLS) is bounded by ``connect_timeout``, writing the request by
``write_timeout`` (over TLS only its encryption: see ``_connect``), and the
response head is due ``first_byte_timeout`` after the request was written. Reading
the body is bounded by ``gap`` (see :meth:`UpstreamResponse.aiter_raw`): each chunk
is due within ``gap`` seconds of the consumer asking for it, at the cost of a clock
read per chunk (one lazily moved timer per body, not a timeout context per chunk).

Keep-alive: connections are pooled per (scheme, host, port), the idle ones reused
newest first, at most :data:`MAX_IDLE_PER_HOST` per host, none idle longer than
:data:`IDLE_EXPIRY` seconds. A connection goes back to the pool only after its
answer was read to the end, and only if llhttp says it can go on (no
``Connection: close``, no HTTP/1.0 without keep-alive, no body that ends with the
connection), no error came, and no stray bytes came after it (:mod:`.answer`);
anything else closes it. One that receives bytes or an end of file while idle (a
server closing it, or an unsolicited ``408``) is closed at once.

A pooled connection can still be closed by the server just as a request goes out
on it (its keep-alive timeout racing our reuse). Then the write fails, or the
connection ends within :data:`STALE_WINDOW` seconds of the write, before a single
byte of the answer: the request is sent again, once, on a fresh connection. Only
then: a server closes an idle connection at once, so such an end means the request
was not being served. A connection that ends later, or after any byte of an answer,
was serving it: the request is never sent again there (it may have been taken and
spent quota; the forwarder decides whether another account tries it).

Errors (messages never quote a header value or a body: they may hold tokens; a
parser's reason is passed on only as a plain phrase, see :mod:`.answer`)::

    UpstreamError                base
     +-- UpstreamConnectError    the request did not get out: DNS, refused, TLS,
     |                           connect timeout, not written in time or at all,
     |                           a header that cannot be sent (a line break,
     |                           a name that is no token, not ASCII), HEAD
     +-- UpstreamProtocolError   a malformed answer, one cut mid-body (an end of
     |                           file before the end of a framed body, a reset),
     |                           no answer at all, an unknown content or
     |                           transfer coding, a protocol switch (101)
     +-- UpstreamTimeout         no response head within ``first_byte_timeout``

A late chunk (``gap``) raises the builtin ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import zlib
from collections.abc import AsyncGenerator, Mapping

import httpx

from qwen_oauth_mitm.proxy.answer import AnswerParser
from qwen_oauth_mitm.proxy.connection import Connection, GapTimer, Reader, where
from qwen_oauth_mitm.proxy.http11 import (
    PoolKey,
    build_request,
    content_codings,
    decoder,
    parse_url,
)
from qwen_oauth_mitm.proxy.upstream_api import (
    Upstream,
    UpstreamAnswer,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)

__all__ = [
    "STALE_WINDOW",
    "Upstream",
    "UpstreamAnswer",
    "UpstreamClient",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "UpstreamTimeout",
]

log = logging.getLogger(__name__)

MAX_IDLE_PER_HOST = 8
STALE_WINDOW = 0.25
"""Seconds after the write within which a reused connection that ends without a
byte of answer counts as stale (closed by the server while idle), not as a server
that took the request and died: one round trip, well before a model's first token."""
IDLE_EXPIRY = 30.0
"""Seconds an idle connection is kept; servers drop theirs after 60 s or more."""
READ_SIZE = 64 * 1024


class UpstreamClient:
    """An HTTP/1.1 client with a keep-alive pool (see the module docstring).

    ``ssl_context``: for https; by default httpx's (certifi's CAs, as the httpx
    client this replaces verified with), made at the first https connection.
    Proxy environment variables are never read (``HTTPS_PROXY`` may point at
    this very proxy).
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_idle_per_host: int = MAX_IDLE_PER_HOST,
        idle_expiry: float = IDLE_EXPIRY,
        read_size: int = READ_SIZE,
    ) -> None:
        self._ssl = ssl_context
        self._max_idle = max_idle_per_host
        self._expiry = idle_expiry
        self.read_size = read_size
        self._idle: dict[PoolKey, list[Connection]] = {}
        self._closed = False
        self.connections_made = 0
        """New connections so far (for tests and the curious)."""

    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        connect_timeout: float,
        write_timeout: float,
        first_byte_timeout: float,
    ) -> UpstreamResponse:
        """Send ``body`` (a ``Content-Length`` is added; ``Host`` comes from the
        URL; a given ``Host``, ``Content-Length`` or header of the connection's,
        such as ``Connection`` or ``Transfer-Encoding``, is dropped: see
        :data:`.http11.DROPPED`); return once the status and headers are in
        (informational 1xx answers are skipped). ``HEAD`` is refused: see
        :mod:`.answer`."""
        if self._closed:
            raise RuntimeError("the upstream client is closed")
        key, target, host_header = parse_url(url)
        try:
            if method.upper() == "HEAD":
                raise ValueError("cannot send this request: HEAD is not supported")
            request = build_request(method, target, host_header, headers, body)
        except ValueError as e:
            # A header that cannot be sent (a token with a line break) is no bug
            # of ours but a bad account or config: the request does not get out.
            raise UpstreamConnectError(str(e)) from None
        timeouts = (write_timeout, first_byte_timeout)
        conn = self._take(key)
        if conn is not None:
            try:
                return await self._exchange(conn, request, body, *timeouts)
            except _Stale as e:
                if not (e.writing or e.after <= STALE_WINDOW):
                    raise _unanswered(key, e) from None
                log.debug("upstream %s: stale kept-alive connection", where(key))
        conn = await self._connect(key, connect_timeout)
        try:
            return await self._exchange(conn, request, body, *timeouts)
        except _Stale as e:
            raise _unanswered(key, e) from None

    def idle_connections(self) -> int:
        """Connections waiting in the pool."""
        return sum(len(conns) for conns in self._idle.values())

    async def aclose(self) -> None:
        """Close every idle connection; answers still open close theirs."""
        self._closed = True
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    # --- the pool ---------------------------------------------------------------

    def _take(self, key: PoolKey) -> Connection | None:
        """The newest idle connection to ``key`` that is still usable."""
        idle = self._idle.get(key)
        now = asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()
            conn.reader.on_idle_event = None
            if now - conn.idle_since > self._expiry:
                # The newest is too old: so is every other one.
                for old in (conn, *idle):
                    old.close()
                idle.clear()
                return None
            if conn.usable():
                return conn
            conn.close()
        return None

    def release(self, conn: Connection, answer: AnswerParser) -> None:
        """Put ``conn`` back in the pool (its ``answer`` read to the end)."""
        if (
            self._closed
            or not answer.complete
            or not answer.keep_alive
            or not conn.usable()
            # Bytes after the answer (parsed or not yet read): not ours to read.
            or answer.stray
            or conn.reader.fed != conn.reader.taken
        ):
            conn.close()
            return
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self._max_idle:
            idle.pop(0).close()  # the oldest
        conn.idle_since = asyncio.get_running_loop().time()
        conn.reader.on_idle_event = functools.partial(self._evict, conn)
        idle.append(conn)

    def _evict(self, conn: Connection) -> None:
        """Bytes or an end of file on an idle connection: it is done for."""
        idle = self._idle.get(conn.key)
        if idle is not None and conn in idle:
            idle.remove(conn)
        conn.close()

    # --- one exchange -----------------------------------------------------------

    async def _connect(self, key: PoolKey, timeout: float) -> Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        tls = self._tls() if scheme == "https" else None
        # What asyncio.open_connection does, with a reader of our own: it tells
        # the pool of bytes or an end of file while the connection is idle.
        reader = Reader(limit=READ_SIZE, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            async with asyncio.timeout(timeout):
                transport, _ = await loop.create_connection(
                    lambda: protocol,
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls is not None else None,
                )
        except TimeoutError:
            raise UpstreamConnectError(
                f"no connection to {where(key)} within {timeout:g} s"
            ) from None
        except OSError as e:  # DNS, refused, unreachable, TLS (ssl.SSLError)
            raise UpstreamConnectError(
                f"cannot connect to {where(key)}: {e or type(e).__name__}"
            ) from None
        # No write buffering past the kernel's: drain() returns once the whole
        # request is out, so write_timeout bounds exactly the writing. Over TLS
        # asyncio counts only what is still to encrypt: once encrypted, a request
        # counts as written even if the peer reads nothing, and an upstream that
        # stops reading is caught by the head's deadline (first_byte_timeout).
        transport.set_write_buffer_limits(high=0)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        self.connections_made += 1
        return Connection(key, reader, writer)

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            context = httpx.create_ssl_context(trust_env=False)
            context.set_alpn_protocols(["http/1.1"])
            self._ssl = context
        return self._ssl

    async def _exchange(
        self,
        conn: Connection,
        request: bytes,
        body: bytes,
        write_timeout: float,
        first_byte_timeout: float,
    ) -> UpstreamResponse:
        """Write the request, read the response head; the connection is closed
        on any failure (and :class:`_Stale` raised if it failed before a byte of
        the answer came, see the module docstring)."""
        try:
            await self._write(conn, request, body, write_timeout)
            answer = await self._read_head(conn, first_byte_timeout)
        except BaseException:
            conn.close()
            raise
        return UpstreamResponse(answer, conn, self)

    async def _write(
        self, conn: Connection, request: bytes, body: bytes, timeout: float
    ) -> None:
        writer = conn.writer
        # One write, head and body: one syscall, one TCP segment for a small
        # request. (writelines would spare the copy, but asyncio's, 3.13, never
        # pauses the protocol, so drain() would not wait for a large body.)
        writer.write(request + body)
        if not writer.transport.get_write_buffer_size():
            return  # all of it is with the kernel (the usual case)
        try:
            async with asyncio.timeout(timeout):
                await writer.drain()
        except TimeoutError:
            raise UpstreamConnectError(
                f"{where(conn.key)} did not take the request within {timeout:g} s"
            ) from None
        except OSError:
            raise _Stale(writing=True) from None

    async def _read_head(self, conn: Connection, timeout: float) -> AnswerParser:
        """The answer, its head parsed (and what of its body came with it)."""
        answer = AnswerParser()
        reader, size = conn.reader, self.read_size
        received = False
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            async with asyncio.timeout(timeout):
                while not answer.head_complete:
                    try:
                        data = await reader.read(size)
                        reader.taken += len(data)
                    except OSError as e:
                        if not received:
                            after = loop.time() - began
                            raise _Stale(writing=False, after=after) from None
                        raise _lost(conn, e) from None
                    if data:
                        received = True
                        answer.feed(data)
                    elif received:
                        answer.eof()  # raises: the head is not complete
                    else:
                        raise _Stale(writing=False, after=loop.time() - began)
        except TimeoutError:
            raise UpstreamTimeout(timeout) from None
        except ValueError as e:
            raise _malformed(conn, e) from None
        return answer


class UpstreamResponse:
    """An answer whose status and headers are in (see :class:`UpstreamAnswer`)."""

    __slots__ = (
        "_answer",
        "_client",
        "_closed",
        "_complete",
        "_conn",
        "_started",
        "headers",
        "status_code",
    )

    def __init__(
        self, answer: AnswerParser, conn: Connection, client: UpstreamClient
    ) -> None:
        self.status_code: int = answer.status_code
        self.headers = httpx.Headers(answer.fields)
        self._answer = answer
        self._conn = conn
        self._client = client
        self._started = False
        self._complete = False
        self._closed = False

    async def aiter_raw(self, *, gap: float | None = None) -> AsyncGenerator[bytes]:
        """The body without its transfer framing; each chunk due within ``gap``
        seconds of being asked for (``TimeoutError``), if ``gap`` is given."""
        if self._started:
            raise RuntimeError("the body can be read once")
        self._started = True
        conn, answer = self._conn, self._answer
        reader, size = conn.reader, self._client.read_size
        timer = GapTimer(reader, gap) if gap is not None else None
        try:
            while True:
                if timer is not None:
                    timer.ask()
                while not (answer.body or answer.complete):
                    answer.check()
                    data = await reader.read(size)
                    reader.taken += len(data)
                    if data:
                        answer.feed(data)
                    else:
                        answer.eof()
                if timer is not None:
                    timer.asked = None
                if not answer.body:  # complete, and every piece handed out
                    self._complete = True
                    break
                pieces, answer.body = answer.body, []
                for piece in pieces:
                    yield piece
        except ValueError as e:
            raise _malformed(conn, e) from None
        except TimeoutError:
            raise  # the gap (an OSError, but no connection error)
        except OSError as e:
            raise _lost(conn, e) from None
        finally:
            if timer is not None:
                timer.cancel()
            if not self._complete:
                conn.close()  # broken, stalled, or left: never reused
        await self.aclose()  # back to the pool at once

    def aiter_bytes(self, *, gap: float | None = None) -> AsyncGenerator[bytes]:
        """:meth:`aiter_raw`, content-decoded: gzip, deflate or identity; another
        coding raises :class:`UpstreamProtocolError` (before reading the body)."""
        codings = content_codings(self.headers.get_list("content-encoding"))
        if not codings:
            return self.aiter_raw(gap=gap)  # no decoding layer at all
        return self._decoded(codings, gap)

    async def _decoded(
        self, codings: list[str], gap: float | None
    ) -> AsyncGenerator[bytes]:
        try:
            decoders = [decoder(c) for c in reversed(codings)]
        except ValueError as e:
            raise UpstreamProtocolError(str(e)) from None
        try:
            async for chunk in self.aiter_raw(gap=gap):
                for d in decoders:
                    chunk = d.decompress(chunk)
                if chunk:
                    yield chunk
            tail = b""
            for d in decoders:
                tail = d.decompress(tail) + d.flush()
        except zlib.error:
            raise UpstreamProtocolError(
                f"the answer is not valid {', '.join(codings)}"
            ) from None
        if tail:
            yield tail

    async def aread(self, *, gap: float | None = None) -> bytes:
        return b"".join([chunk async for chunk in self.aiter_bytes(gap=gap)])

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._complete:
            self._client.release(self._conn, self._answer)
        else:
            self._conn.close()  # the rest of the body would be misread as an answer


# --- internals ------------------------------------------------------------------


class _Stale(Exception):
    """A connection failed before a byte of the answer came (see the module
    docstring); ``writing``: while the request was written; ``after``: seconds
    after it was written."""

    def __init__(self, *, writing: bool, after: float = 0.0) -> None:
        super().__init__()
        self.writing = writing
        self.after = after


def _unanswered(key: PoolKey, stale: _Stale) -> UpstreamError:
    """What a connection that failed before a byte of the answer is to the caller."""
    place = where(key)
    if stale.writing:
        return UpstreamConnectError(
            f"{place} closed the connection as the request was sent"
        )
    return UpstreamProtocolError(f"{place} closed the connection without answering")


def _malformed(conn: Connection, error: ValueError) -> UpstreamError:
    """An answer :class:`.AnswerParser` refused (its messages quote nothing)."""
    return UpstreamProtocolError(f"malformed answer from {where(conn.key)}: {error}")


def _lost(conn: Connection, error: OSError) -> UpstreamError:
    return UpstreamProtocolError(
        f"connection to {where(conn.key)} lost: {type(error).__name__}"
    )
