"""The upstream client against a local server scripted with raw bytes (127.0.0.1)."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import ipaddress
import ssl
import time
import traceback
import zlib
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from qwen_oauth_mitm.proxy.answer import MAX_HEAD
from qwen_oauth_mitm.proxy.upstream import (
    STALE_WINDOW,
    UpstreamClient,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
)

TOKEN = "sk-live-0123456789abcdef"


@dataclass(frozen=True)
class Answer:
    """What the server does with one request: send ``parts`` in order (bytes, or a
    float: a pause of that many seconds), then close the connection if ``close``."""

    parts: Sequence[bytes | float] = ()
    close: bool = False


def ok(body: bytes = b"ok", *headers: str) -> bytes:
    """A 200 with a ``Content-Length``."""
    lines = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunked(*chunks: bytes, tail: bytes = b"0\r\n\r\n") -> bytes:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + tail


class RawServer:
    """Reads requests (head and ``Content-Length`` body) on every connection and
    answers each with the next scripted :class:`Answer` (a plain ``ok()`` once
    they run out)."""

    def __init__(self, *answers: Answer, tls: ssl.SSLContext | None = None) -> None:
        self.answers = deque(answers)
        self.tls = tls
        self.connections = 0
        self.closed_by_client = 0
        self.requests: list[bytes] = []
        self.alpn: list[str | None] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", 0, ssl=self.tls
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        self._writers.add(writer)
        if self.tls is not None:
            self.alpn.append(
                writer.get_extra_info("ssl_object").selected_alpn_protocol()
            )
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.closed_by_client += 1
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                self.requests.append(head + await reader.readexactly(length))
                answer = self.answers.popleft() if self.answers else Answer([ok()])
                for part in answer.parts:
                    if isinstance(part, float):
                        await asyncio.sleep(part)
                    else:
                        writer.write(part)
                        await writer.drain()
                if answer.close:
                    return
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    c = UpstreamClient()
    yield c
    await c.aclose()


async def send(
    client: UpstreamClient,
    url: str,
    *,
    path: str = "/v1/chat/completions",
    headers: dict[str, str] | None = None,
    body: bytes = b"{}",
    first_byte: float = 5.0,
    connect: float = 5.0,
    write: float = 5.0,
) -> UpstreamResponse:
    return await client.send(
        "POST",
        url + path,
        headers or {"Content-Type": "application/json"},
        body,
        connect_timeout=connect,
        write_timeout=write,
        first_byte_timeout=first_byte,
    )


async def fetch(client: UpstreamClient, url: str, **kwargs: Any) -> bytes:
    response = await send(client, url, **kwargs)
    try:
        return await response.aread()
    finally:
        await response.aclose()


# --- framing ----------------------------------------------------------------------


async def test_a_content_length_body_and_the_request_in_one_write(
    client: UpstreamClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[bytes] = []
    real_write = asyncio.StreamWriter.write

    def spy(self: asyncio.StreamWriter, data: bytes) -> None:
        if self.get_extra_info("peername")[1] == port:  # the client's, not the server's
            writes.append(bytes(data))
        real_write(self, data)

    async with RawServer(Answer([ok(b"hello", "X-A: 1")])) as server:
        port = int(server.url.rsplit(":", 1)[1])
        monkeypatch.setattr(asyncio.StreamWriter, "write", spy)
        headers = {"Host": "evil.example", "Content-Length": "99", "X-Token": TOKEN}
        path = "/v1/chat?x=1&y=%20"
        response = await send(
            client, server.url, path=path, headers=headers, body=b"{1}"
        )
        monkeypatch.undo()
        assert response.status_code == 200
        assert isinstance(response.headers, httpx.Headers)
        assert response.headers["x-a"] == "1"
        assert await response.aread() == b"hello"
        await response.aclose()
    assert len(writes) == 1  # head and body: one socket write
    assert writes[0] == server.requests[0]
    head, _, body = writes[0].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == f"POST {path} HTTP/1.1"
    assert lines.count(f"Host: 127.0.0.1:{port}") == 1
    assert "Host: evil.example" not in lines
    assert "Content-Length: 3" in lines
    assert f"X-Token: {TOKEN}" in lines
    assert body == b"{1}"


async def test_a_chunked_body_with_extensions_and_trailers(
    client: UpstreamClient,
) -> None:
    wire = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5;name=value\r\nhello\r\n6;x;y="1 2"\r\n world\r\n'
        b"0\r\nX-Trailer: t\r\n\r\n"
    )
    async with RawServer(Answer([wire])) as server:
        response = await send(client, server.url)
        assert [c async for c in response.aiter_raw()] == [b"hello", b" world"]
        assert await fetch(client, server.url) == b"ok"  # and the connection goes on
    assert server.connections == 1


async def test_a_close_delimited_body(client: UpstreamClient) -> None:
    wire = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it"
    async with RawServer(Answer([wire], close=True)) as server:
        assert await fetch(client, server.url) == b"all of it"
        assert client.idle_connections() == 0
        assert await fetch(client, server.url) == b"ok"
    assert server.connections == 2


async def test_informational_answers_are_skipped(client: UpstreamClient) -> None:
    wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n"
    async with RawServer(Answer([wire, ok(b"after")])) as server:
        response = await send(client, server.url)
        assert response.status_code == 200
        assert await response.aread() == b"after"
        await response.aclose()


@pytest.mark.parametrize("method", ["HEAD", "head"])
async def test_head_is_refused_before_anything_goes_out(
    client: UpstreamClient, method: str
) -> None:
    # llhttp would read the body a HEAD answer's Content-Length announces (and
    # take the next answer for it): httptools cannot tell it the method.
    async with RawServer() as server:
        with pytest.raises(UpstreamConnectError, match="HEAD is not supported"):
            await client.send(
                method,
                server.url + "/x",
                {},
                b"",
                connect_timeout=5,
                write_timeout=5,
                first_byte_timeout=5,
            )
    assert (server.connections, client.connections_made) == (0, 0)


async def test_headers_of_the_connection_are_never_sent(
    client: UpstreamClient,
) -> None:
    # The client frames the request and keeps the connection itself: a caller's
    # "Connection: close" or chunked framing must not reach the wire.
    dropped = {
        "Connection": "close",
        "keep-alive": "timeout=1",
        "Transfer-Encoding": "chunked",
        "TE": "trailers",
        "Upgrade": "websocket",
        "Expect": "100-continue",
        "Proxy-Connection": "close",
    }
    async with RawServer() as server:
        for _ in range(2):
            assert await fetch(client, server.url, headers={**dropped, "X-A": "1"})
    assert server.connections == 1  # kept alive, as the client believes
    for request in server.requests:
        head = request.partition(b"\r\n\r\n")[0].lower()
        assert b"x-a: 1" in head.split(b"\r\n")
        for name in dropped:
            assert b"\r\n" + name.lower().encode() + b":" not in head


# --- keep-alive --------------------------------------------------------------------


async def test_one_connection_serves_requests_one_after_another(
    client: UpstreamClient,
) -> None:
    async with RawServer() as server:
        for _ in range(3):
            assert await fetch(client, server.url) == b"ok"
        assert client.idle_connections() == 1
    assert (server.connections, client.connections_made) == (1, 1)
    assert len(server.requests) == 3


@pytest.mark.parametrize("read", [0, 1], ids=["unread", "half read"])
async def test_a_body_not_read_to_its_end_closes_its_connection(
    client: UpstreamClient, read: int
) -> None:
    async with RawServer(Answer([chunked(b"a", b"b")])) as server:
        response = await send(client, server.url)
        chunks = response.aiter_raw()
        for _ in range(read):
            assert await anext(chunks) == b"a"
        await chunks.aclose()
        await response.aclose()
        await response.aclose()  # idempotent
        assert client.idle_connections() == 0
        assert await fetch(client, server.url) == b"ok"
    assert server.connections == 2


async def test_connection_close_is_honoured(client: UpstreamClient) -> None:
    async with RawServer(Answer([ok(b"bye", "Connection: close")])) as server:
        assert await fetch(client, server.url) == b"bye"
        assert client.idle_connections() == 0
        assert await fetch(client, server.url) == b"ok"
    assert server.connections == 2


async def test_an_http_1_0_answer_is_not_kept_alive(client: UpstreamClient) -> None:
    async with RawServer(
        Answer([b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi"])
    ) as s:
        assert await fetch(client, s.url) == b"hi"
        assert await fetch(client, s.url) == b"ok"
    assert s.connections == 2


async def test_stray_bytes_after_an_answer_close_its_connection(
    client: UpstreamClient,
) -> None:
    async with RawServer(Answer([ok(b"one") + ok(b"unasked")])) as server:
        assert await fetch(client, server.url) == b"one"
        assert await fetch(client, server.url) == b"ok"  # never b"unasked"
    assert server.connections == 2


async def test_a_stale_kept_alive_connection_is_retried_once_on_a_new_one(
    client: UpstreamClient,
) -> None:
    # The server reads the second request and closes without a byte of answer:
    # its keep-alive timeout raced our reuse.
    async with RawServer(Answer([ok(b"1")]), Answer(close=True)) as server:
        assert await fetch(client, server.url) == b"1"
        assert await fetch(client, server.url) == b"ok"
    assert server.connections == 2
    assert len(server.requests) == 3


async def test_a_stale_connection_is_retried_only_once(client: UpstreamClient) -> None:
    async with RawServer(Answer([ok()]), Answer(close=True), Answer(close=True)) as s:
        await fetch(client, s.url)
        with pytest.raises(UpstreamProtocolError, match="without answering"):
            await fetch(client, s.url)
    assert s.connections == 2
    assert len(s.requests) == 3


async def test_a_kept_alive_connection_that_ends_late_is_not_sent_again(
    client: UpstreamClient,
) -> None:
    # It read the request and worked on it before it went away: it may have
    # served (and billed) it, so the request must not go out a second time.
    late = Answer([STALE_WINDOW + 0.25], close=True)
    async with RawServer(Answer([ok(b"1")]), late) as server:
        assert await fetch(client, server.url) == b"1"
        with pytest.raises(UpstreamProtocolError, match="without answering"):
            await fetch(client, server.url)
    assert server.connections == 1
    assert len(server.requests) == 2


async def test_a_new_connection_closed_without_an_answer_is_not_retried(
    client: UpstreamClient,
) -> None:
    async with RawServer(Answer(close=True)) as server:
        with pytest.raises(UpstreamProtocolError, match="without answering"):
            await fetch(client, server.url)
    assert (server.connections, len(server.requests)) == (1, 1)


async def test_an_answer_cut_after_its_first_byte_is_never_sent_again(
    client: UpstreamClient,
) -> None:
    async with RawServer(Answer([ok()]), Answer([b"HTTP/1.1 2"], close=True)) as s:
        await fetch(client, s.url)
        with pytest.raises(UpstreamProtocolError):
            await fetch(client, s.url)
    assert (s.connections, len(s.requests)) == (1, 2)


async def test_a_connection_the_server_closes_while_idle_leaves_the_pool(
    client: UpstreamClient,
) -> None:
    async with RawServer(Answer([ok()], close=True)) as server:
        await fetch(client, server.url)  # kept: the answer did not say close
        for _ in range(100):
            if not client.idle_connections():
                break
            await asyncio.sleep(0.01)
        assert client.idle_connections() == 0
        await fetch(client, server.url)
    assert (server.connections, len(server.requests)) == (2, 2)  # no retry needed


async def test_idle_connections_expire() -> None:
    client = UpstreamClient(idle_expiry=0.05)
    async with RawServer() as server:
        await fetch(client, server.url)
        await fetch(client, server.url)
        await asyncio.sleep(0.1)
        await fetch(client, server.url)
        await client.aclose()
    assert server.connections == 2


async def test_idle_connections_per_host_are_bounded() -> None:
    client = UpstreamClient(max_idle_per_host=2)
    async with RawServer() as server:
        responses = [await send(client, server.url) for _ in range(3)]
        for response in responses:
            assert await response.aread() == b"ok"
        assert client.idle_connections() == 2
        await client.aclose()
        assert client.idle_connections() == 0
        for _ in range(100):
            if server.closed_by_client == 3:
                break
            await asyncio.sleep(0.01)
    assert server.closed_by_client == 3  # the one over the bound, then the two


# --- broken answers ---------------------------------------------------------------


@pytest.mark.parametrize(
    "wire",
    [
        chunked(b"hello", tail=b"5\r\nwor"),
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["cut mid-chunk", "short content-length", "bad chunk size"],
)
async def test_a_body_cut_or_malformed_is_a_protocol_error(
    client: UpstreamClient, wire: bytes
) -> None:
    async with RawServer(Answer([wire], close=True)) as server:
        response = await send(client, server.url)
        assert response.status_code == 200
        with pytest.raises(UpstreamProtocolError):
            await response.aread()
        await response.aclose()
        assert client.idle_connections() == 0


@pytest.mark.parametrize(
    "wire",
    [b"HTTP/1.1 OK 200\r\n\r\n", b"<html>busy</html>\r\n\r\n", b"SSH-2.0-x\r\n\r\n"],
)
async def test_a_garbage_status_line_is_a_protocol_error(
    client: UpstreamClient, wire: bytes
) -> None:
    async with RawServer(Answer([wire])) as server:
        with pytest.raises(UpstreamProtocolError, match="malformed answer"):
            await send(client, server.url)
        assert client.idle_connections() == 0


async def test_a_protocol_switch_is_a_protocol_error(client: UpstreamClient) -> None:
    wire = (
        b"HTTP/1.1 101 Switching\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
    )
    async with RawServer(Answer([wire])) as server:
        with pytest.raises(UpstreamProtocolError, match="switches protocols"):
            await send(client, server.url)
        assert client.idle_connections() == 0


async def test_a_head_over_max_head_is_a_protocol_error(client: UpstreamClient) -> None:
    filler = b"X-F: " + b"a" * 8000 + b"\r\n"
    wire = b"HTTP/1.1 200 OK\r\n" + filler * (MAX_HEAD // len(filler) + 1)
    async with RawServer(Answer([wire, 5.0])) as server:
        with pytest.raises(UpstreamProtocolError, match="head is over"):
            await send(client, server.url)


async def test_an_http_1_0_answer_with_keep_alive_is_kept_alive(
    client: UpstreamClient,
) -> None:
    wire = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nhi"
    async with RawServer(Answer([wire])) as server:
        assert await fetch(client, server.url) == b"hi"
        assert await fetch(client, server.url) == b"ok"
    assert server.connections == 1


async def test_a_malformed_body_comes_after_its_good_pieces(
    client: UpstreamClient,
) -> None:
    wire = chunked(b"hello", tail=b"zz\r\n")  # one read: head, chunk, fault
    async with RawServer(Answer([wire], close=True)) as server:
        response = await send(client, server.url)  # answered: no error yet
        chunks = response.aiter_raw()
        assert await anext(chunks) == b"hello"
        with pytest.raises(UpstreamProtocolError, match="malformed answer from"):
            await anext(chunks)
        await response.aclose()
        assert client.idle_connections() == 0


# --- content codings --------------------------------------------------------------

TEXT = b"data: hello\n\n" * 50


@pytest.mark.parametrize(
    ("coding", "encoded"),
    [
        ("gzip", gzip.compress(TEXT)),
        ("deflate", zlib.compress(TEXT)),
        ("deflate", zlib.compress(TEXT, wbits=-zlib.MAX_WBITS)),  # raw, as some send
        ("identity", TEXT),
        ("gzip, identity", gzip.compress(TEXT)),
    ],
)
async def test_bytes_are_decoded_and_raw_is_not(
    client: UpstreamClient, coding: str, encoded: bytes
) -> None:
    halves = (encoded[:7], encoded[7:])
    wire = chunked(*halves).replace(
        b"chunked\r\n", f"chunked\r\nContent-Encoding: {coding}\r\n".encode(), 1
    )
    async with RawServer(Answer([wire]), Answer([wire])) as server:
        response = await send(client, server.url)
        assert await response.aread() == TEXT
        response = await send(client, server.url)
        assert b"".join([c async for c in response.aiter_raw()]) == encoded


@pytest.mark.parametrize(
    ("coding", "body", "said"),
    [
        ("br", b"\x1b\x00", "unsupported"),
        ("gzip", b"not gzip at all", "not valid gzip"),
    ],
)
async def test_an_unknown_or_broken_coding_is_a_protocol_error(
    client: UpstreamClient, coding: str, body: bytes, said: str
) -> None:
    async with RawServer(Answer([ok(body, f"Content-Encoding: {coding}")])) as server:
        response = await send(client, server.url)
        with pytest.raises(UpstreamProtocolError, match=said):
            await response.aread()
        await response.aclose()


# --- timeouts ---------------------------------------------------------------------


async def test_no_head_within_first_byte_timeout(client: UpstreamClient) -> None:
    async with RawServer(Answer([5.0])) as server:
        start = time.monotonic()
        with pytest.raises(UpstreamTimeout, match=r"no answer within 0\.2 s"):
            await send(client, server.url, first_byte=0.2)
        assert 0.2 <= time.monotonic() - start < 1.5
        assert client.idle_connections() == 0


async def test_a_late_chunk_is_a_timeout_error(client: UpstreamClient) -> None:
    async with RawServer(Answer([chunked(b"a", tail=b""), 5.0])) as server:
        response = await send(client, server.url)
        chunks = response.aiter_raw(gap=0.2)
        assert await anext(chunks) == b"a"
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            await anext(chunks)
        assert 0.2 <= time.monotonic() - start < 1.5
        await response.aclose()
        assert client.idle_connections() == 0


async def test_a_stream_longer_than_its_gap_with_short_gaps_passes(
    client: UpstreamClient,
) -> None:
    """Each gap counts, not the sum; nor the time the consumer holds a chunk."""
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    parts: list[bytes | float] = [head]
    for i in range(6):
        parts += [0.08, b"1\r\n%d\r\n" % i]
    parts += [b"0\r\n\r\n"]
    async with RawServer(Answer(parts)) as server:
        response = await send(client, server.url)
        got = []
        start = time.monotonic()
        async for chunk in response.aiter_raw(gap=0.25):
            got.append(chunk)
            if len(got) == 3:
                await asyncio.sleep(0.4)  # holding a chunk: no wait for the upstream
        assert time.monotonic() - start > 0.5
        assert got == [b"%d" % i for i in range(6)]


async def test_connecting_is_bounded(tmp_path: Path) -> None:
    # A server that accepts TCP but never answers the TLS handshake.
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = UpstreamClient(ssl_context=ssl.create_default_context())
    try:
        start = time.monotonic()
        with pytest.raises(UpstreamConnectError, match=r"within 0\.2 s"):
            await send(client, f"https://127.0.0.1:{port}", connect=0.2)
        assert time.monotonic() - start < 1.5
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


async def test_writing_is_bounded(client: UpstreamClient) -> None:
    # A server that never reads: a large body fills the socket buffers.
    done = asyncio.Event()

    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await done.wait()
        writer.close()

    server = await asyncio.start_server(deaf, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    try:
        start = time.monotonic()
        with pytest.raises(UpstreamConnectError, match=r"did not take the request"):
            await send(client, url, body=b"x" * 32_000_000, write=0.2)
        assert time.monotonic() - start < 1.5
    finally:
        done.set()
        server.close()
        await server.wait_closed()


async def test_a_refused_connection(client: UpstreamClient) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(
        UpstreamConnectError, match=f"cannot connect to 127.0.0.1:{port}"
    ):
        await send(client, f"http://127.0.0.1:{port}")


async def test_closing_the_client_closes_its_idle_connections() -> None:
    client = UpstreamClient()
    async with RawServer() as server:
        await fetch(client, server.url)
        await client.aclose()
        for _ in range(100):
            if server.closed_by_client:
                break
            await asyncio.sleep(0.01)
        assert server.closed_by_client == 1
        with pytest.raises(RuntimeError):
            await fetch(client, server.url)


# --- TLS --------------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path

    def server(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        context.set_alpn_protocols(["h2", "http/1.1"])
        return context

    def client(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A CA and a certificate it signed for localhost and 127.0.0.1."""
    folder = tmp_path_factory.mktemp("certs")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                key_cert_sign=True, crl_sign=True, encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = Certs(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


async def test_https_with_a_given_context(certs: Certs) -> None:
    client = UpstreamClient(ssl_context=certs.client())
    async with RawServer(tls=certs.server()) as server:
        for _ in range(2):
            assert await fetch(client, server.url) == b"ok"
        await client.aclose()
    assert server.connections == 1  # kept alive over TLS too
    assert b"\r\nHost: 127.0.0.1:" in server.requests[0]


async def test_https_by_default_verifies_with_httpx_context_and_asks_http_1_1(
    certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[dict[str, Any]] = []

    def create_ssl_context(**kwargs: Any) -> ssl.SSLContext:
        made.append(kwargs)
        return certs.client()  # httpx's, but trusting the test CA

    monkeypatch.setattr(httpx, "create_ssl_context", create_ssl_context)
    client = UpstreamClient()
    async with RawServer(tls=certs.server()) as server:
        assert (
            await fetch(client, server.url.replace("127.0.0.1", "localhost")) == b"ok"
        )
        await client.aclose()
    assert made == [{"trust_env": False}]
    assert server.alpn == ["http/1.1"]
    assert b"\r\nHost: localhost:" in server.requests[0]


async def test_https_refuses_a_certificate_it_cannot_verify(certs: Certs) -> None:
    client = UpstreamClient()  # certifi's CAs: the test CA is not one
    async with RawServer(tls=certs.server()) as server:
        with pytest.raises(UpstreamConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await fetch(client, server.url)
        await client.aclose()
    assert server.requests == []


# --- secrets never in messages ----------------------------------------------------


def _everything_said(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))


@pytest.mark.parametrize(
    "wire",
    [
        f"HTTP/1.1 200 OK\r\nX-Echo {TOKEN}\r\n\r\n".encode(),
        f"HTTP/1.1 {TOKEN}\r\n\r\n".encode(),
        f"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{TOKEN}\r\n".encode(),
        f"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab{TOKEN}".encode(),
        f"HTTP/1.1 200 OK\r\nContent-Encoding: {TOKEN}\r\n\r\n".encode(),
    ],
    ids=["header line", "status line", "chunk size", "chunk footer", "coding"],
)
async def test_an_answer_quoting_a_token_never_puts_it_in_an_error(
    client: UpstreamClient, wire: bytes
) -> None:
    async with RawServer(Answer([wire], close=True)) as server:
        with pytest.raises(UpstreamError) as caught:
            await fetch(client, server.url)
    assert TOKEN not in _everything_said(caught.value)
    assert str(caught.value)  # something is said all the same


async def test_a_request_header_that_cannot_be_sent_is_not_quoted(
    client: UpstreamClient,
) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}\r\nX-Injected: 1"}
    with pytest.raises(UpstreamConnectError, match="cannot send this") as caught:
        await send(client, "http://127.0.0.1:9", headers=headers)
    assert TOKEN not in _everything_said(caught.value)


# --- any framing, any cut ---------------------------------------------------------


@st.composite
def framed(draw: st.DrawFn) -> tuple[bytes, bytes, int]:
    """A body, an answer carrying it (chunked at any points, with or without
    extensions and trailers; or a Content-Length; or closed), and a read size."""
    body = draw(st.binary(max_size=3000))
    framing = draw(st.sampled_from(["chunked", "length", "close"]))
    if framing == "length":
        wire = ok(body)
    elif framing == "close":
        wire = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body
    else:
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=12)))
        pieces = [
            body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)
        ]
        ext = draw(st.sampled_from([b"", b";a=b", b';q="x;y"']))
        trailer = draw(st.sampled_from([b"", b"X-T: 1\r\n"]))
        wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        for piece in filter(None, pieces):  # an empty chunk would end the body
            wire += b"%x%s\r\n%s\r\n" % (len(piece), ext, piece)
        wire += b"0" + ext + b"\r\n" + trailer + b"\r\n"
    return body, wire, draw(st.integers(1, 70))


@given(framed(), st.lists(st.integers(1, 400), max_size=20))
def test_any_body_framed_and_cut_anyhow_comes_out_whole(
    case: tuple[bytes, bytes, int], segments: list[int]
) -> None:
    body, wire, read_size = case
    parts: list[bytes | float] = []
    rest = wire
    for size in segments:
        if not rest:
            break
        parts += [rest[:size], 0.0]
        rest = rest[size:]
    parts.append(rest)

    async def scenario() -> None:
        client = UpstreamClient(read_size=read_size)
        async with RawServer(Answer(parts, close=True)) as server:
            response = await send(client, server.url)
            got = [chunk async for chunk in response.aiter_raw()]
            assert all(got)  # no empty chunks
            assert b"".join(got) == body
            await response.aclose()
            await client.aclose()

    asyncio.run(scenario())
