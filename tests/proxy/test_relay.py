"""The relay's HTTP/1.1 framing, keep-alive, malformed requests, and hang-ups."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from qwen_oauth_mitm.proxy.relay import Relay, ResponseWriter

Handler = Callable[[str, ResponseWriter], Coroutine[Any, Any, None]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Coroutine[Any, Any, int]]]:
    relays: list[Relay] = []

    async def start(handler: Handler) -> int:
        relay = Relay(handler)
        relays.append(relay)
        return await relay.start()

    yield start
    for relay in relays:
        await relay.stop()


async def _exchange(port: int, request: bytes, *, until_eof: bool = False) -> bytes:
    """One request on a new connection; the answer's bytes, as the relay wrote them.

    The connection stays open after a framed answer: read up to its end, or (with
    ``until_eof``) up to the relay closing the connection.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    if until_eof:
        answer = await asyncio.wait_for(reader.read(), timeout=5)
    else:
        head = await reader.readuntil(b"\r\n\r\n")
        if b"Transfer-Encoding: chunked" in head:
            answer = head + await reader.readuntil(b"\r\n0\r\n\r\n")
        else:
            length = int(head.split(b"Content-Length: ", 1)[1].split(b"\r\n")[0])
            answer = head + await reader.readexactly(length)
    writer.close()
    await writer.wait_closed()
    return answer


REQUEST = b"POST /flow-1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"


async def test_chunked_answer_and_path(serve: Any) -> None:
    paths: list[str] = []

    async def handler(path: str, out: ResponseWriter) -> None:
        paths.append(path)
        await out.start(200, [("Content-Type", "text/event-stream")], chunked=True)
        await out.write(b"data: 1\n\n")
        await out.write(b"")  # nothing: must not end the body
        await out.write(b"data: 2\n\n")
        await out.end()

    answer = await _exchange(await serve(handler), REQUEST)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"Transfer-Encoding: chunked" in head
    assert b"Connection" not in head  # kept alive: mitmproxy reuses it
    # The first bytes at once; the rest of the turn as one chunk with the end.
    assert body == b"9\r\ndata: 1\n\n\r\n9\r\ndata: 2\n\n\r\n0\r\n\r\n"
    assert paths == ["/flow-1"]


async def test_writes_in_one_turn_leave_as_one_socket_write(serve: Any) -> None:
    """The first bytes go at once, the rest of a burst as one chunk; what comes
    later is not held back for it."""
    reads: list[bytes] = []

    async def handler(path: str, out: ResponseWriter) -> None:
        await out.start(200, [("Content-Type", "text/event-stream")], chunked=True)
        for i in range(50):
            await out.write(b"data: %d\n\n" % i)
        await asyncio.sleep(0.2)  # the burst must reach the reader meanwhile
        await out.write(b"data: late\n\n")
        await out.end()

    reader, writer = await asyncio.open_connection("127.0.0.1", await serve(handler))
    writer.write(REQUEST)
    await writer.drain()
    loop = asyncio.get_running_loop()
    started = loop.time()
    seen = b""
    while not seen.endswith(b"0\r\n\r\n"):
        data = await asyncio.wait_for(reader.read(65536), timeout=5)
        assert data
        reads.append(data)
        seen += data
        if b"data: 49" in seen and b"late" not in seen:
            assert loop.time() - started < 0.15  # sent in its own turn, not later
    writer.close()
    await writer.wait_closed()
    _, _, body = seen.partition(b"\r\n\r\n")
    chunks = [
        b"data: 0\n\n",
        b"".join(b"data: %d\n\n" % i for i in range(1, 50)),
        b"data: late\n\n",
    ]
    assert body == b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + (
        b"0\r\n\r\n"
    )
    assert reads[0].startswith(b"HTTP/1.1 200")  # the head went with the first bytes


async def test_what_was_written_before_a_failure_still_goes_out(serve: Any) -> None:
    async def handler(path: str, out: ResponseWriter) -> None:
        await out.start(200, [("Content-Type", "text/event-stream")], chunked=True)
        await out.write(b"data: 1\n\n")
        raise RuntimeError("boom")  # in the same turn as the write

    answer = await _exchange(await serve(handler), REQUEST, until_eof=True)
    assert b"9\r\ndata: 1\n\n\r\n" in answer
    assert not answer.endswith(b"0\r\n\r\n")  # cut, never complete-looking


async def test_whole_answer_has_a_length(serve: Any) -> None:
    async def handler(path: str, out: ResponseWriter) -> None:
        await out.answer(429, b'{"error":{}}', extra=[("Retry-After", "3")])

    answer = await _exchange(await serve(handler), REQUEST)
    assert answer.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
    assert b"Content-Length: 12\r\n" in answer
    assert b"Retry-After: 3\r\n" in answer
    assert answer.endswith(b'\r\n\r\n{"error":{}}')


async def test_a_malformed_request_is_400(serve: Any) -> None:
    async def handler(path: str, out: ResponseWriter) -> None:
        raise AssertionError("not reached")

    answer = await _exchange(await serve(handler), b"NONSENSE\r\n\r\n", until_eof=True)
    assert answer.startswith(b"HTTP/1.1 400 ")


async def test_a_hangup_cancels_the_handler(serve: Any) -> None:
    cancelled = asyncio.Event()

    async def handler(path: str, out: ResponseWriter) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    port = await serve(handler)
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.close()
    await writer.wait_closed()
    await asyncio.wait_for(cancelled.wait(), timeout=2)


async def _read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One answer off a kept-alive connection: its head and its (dechunked) body."""
    head = await reader.readuntil(b"\r\n\r\n")
    if b"Transfer-Encoding: chunked" in head:
        body = b""
        while size := int(await reader.readuntil(b"\r\n"), 16):
            body += (await reader.readexactly(size + 2))[:-2]
        assert await reader.readexactly(2) == b"\r\n"
        return head, body
    length = int(head.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
    return head, await reader.readexactly(length)


async def _at_eof(reader: asyncio.StreamReader, within: float = 2) -> bool:
    return await asyncio.wait_for(reader.read(), timeout=within) == b""


async def test_two_requests_over_one_connection(serve: Any) -> None:
    paths: list[str] = []

    async def handler(path: str, out: ResponseWriter) -> None:
        paths.append(path)
        if path == "/flow-1":
            await out.start(200, [("Content-Type", "text/event-stream")], chunked=True)
            await out.write(b"data: 1\n\n")
            await out.end()
        else:
            await out.answer(200, b"{}")

    reader, writer = await asyncio.open_connection("127.0.0.1", await serve(handler))
    writer.write(REQUEST)
    head, body = await _read_answer(reader)
    assert b"Connection" not in head
    assert body == b"data: 1\n\n"
    # the next request, its body chunked: read whole, the connection stays usable
    writer.write(
        b"POST /flow-2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\n{}\r\n0\r\n\r\n"
    )
    head, body = await _read_answer(reader)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Connection" not in head
    assert body == b"{}"
    writer.write(REQUEST.replace(b"flow-1", b"flow-3"))
    assert (await _read_answer(reader))[1] == b"{}"
    assert paths == ["/flow-1", "/flow-2", "/flow-3"]
    writer.close()
    await writer.wait_closed()


async def test_a_request_saying_connection_close_is_the_last(serve: Any) -> None:
    async def handler(path: str, out: ResponseWriter) -> None:
        await out.answer(200, b"{}")

    reader, writer = await asyncio.open_connection("127.0.0.1", await serve(handler))
    writer.write(REQUEST.replace(b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n"))
    head, body = await _read_answer(reader)
    assert b"Connection: close\r\n" in head
    assert body == b"{}"
    assert await _at_eof(reader)
    writer.close()


@pytest.mark.parametrize("how", ["returns", "raises"])
async def test_a_cut_chunked_answer_closes_the_connection(serve: Any, how: str) -> None:
    async def handler(path: str, out: ResponseWriter) -> None:
        await out.start(200, [("Content-Type", "text/event-stream")], chunked=True)
        await out.write(b"data: 1\n\n")
        if how == "raises":
            raise RuntimeError("upstream broke")

    reader, writer = await asyncio.open_connection("127.0.0.1", await serve(handler))
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    rest = await asyncio.wait_for(reader.read(), timeout=2)  # up to the close
    assert rest == b"9\r\ndata: 1\n\n\r\n"  # no last chunk: a visible cut
    writer.close()


async def test_a_short_or_unframed_answer_closes_the_connection(serve: Any) -> None:
    async def handler(path: str, out: ResponseWriter) -> None:
        if path == "/short":
            await out.start(200, [("Content-Length", "10")], chunked=False)
            await out.write(b"12345")
            await out.end()
        else:  # no length: the body ends with the connection
            await out.start(200, [("Content-Type", "text/plain")], chunked=False)
            await out.write(b"all of it")
            await out.end()

    port = await serve(handler)
    answer = await _exchange(
        port, REQUEST.replace(b"/flow-1", b"/short"), until_eof=True
    )
    assert answer.endswith(b"\r\n\r\n12345")
    answer = await _exchange(port, REQUEST, until_eof=True)
    assert b"Connection: close\r\n" in answer
    assert answer.endswith(b"\r\n\r\nall of it")


async def test_an_idle_connection_is_closed(serve: Any) -> None:
    async def handler(path: str, out: ResponseWriter) -> None:
        await out.answer(200, b"{}")

    relay = Relay(handler, idle_timeout=0.5)
    port = await relay.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST)
        assert (await _read_answer(reader))[1] == b"{}"
        with pytest.raises(TimeoutError):  # kept open for a while
            await asyncio.wait_for(reader.read(), timeout=0.2)
        assert await _at_eof(reader)  # then closed, nothing sent
        writer.close()
    finally:
        await relay.stop()


async def test_a_body_slower_than_the_idle_timeout_is_still_read() -> None:
    """The idle timeout bounds the wait for a request, not its upload: a body
    the addon collects reaches the relay only when the client's upload ends."""

    async def handler(path: str, out: ResponseWriter) -> None:
        await out.answer(200, b"{}")

    relay = Relay(handler, idle_timeout=0.3)
    port = await relay.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /flow-1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(4):  # 0.8 s of upload, the body's end last
            await asyncio.sleep(0.2)
            writer.write(b"1\r\nx\r\n")
        writer.write(b"0\r\n\r\n")
        assert (await asyncio.wait_for(_read_answer(reader), timeout=5))[1] == b"{}"
        writer.close()
    finally:
        await relay.stop()


async def test_a_connection_that_never_asks_is_closed() -> None:
    async def handler(path: str, out: ResponseWriter) -> None:
        raise AssertionError("not reached")

    relay = Relay(handler, idle_timeout=0.3)
    port = await relay.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /flow-1 HTTP/1.1\r\n")  # and nothing more
        assert await _at_eof(reader)
        writer.close()
    finally:
        await relay.stop()


async def test_bytes_during_a_request_close_the_connection_after_it(serve: Any) -> None:
    """A pipelined request is not served (nor misread); the current one is."""
    paths: list[str] = []
    release = asyncio.Event()

    async def handler(path: str, out: ResponseWriter) -> None:
        paths.append(path)
        await release.wait()
        await out.answer(200, b"{}")

    reader, writer = await asyncio.open_connection("127.0.0.1", await serve(handler))
    writer.write(REQUEST)
    await asyncio.sleep(0.05)
    writer.write(REQUEST.replace(b"flow-1", b"flow-2"))
    await asyncio.sleep(0.05)
    release.set()
    head, body = await _read_answer(reader)
    assert b"Connection: close\r\n" in head
    assert body == b"{}"
    assert await _at_eof(reader)
    assert paths == ["/flow-1"]
    writer.close()


async def test_a_malformed_request_closes_the_connection(serve: Any) -> None:
    async def handler(path: str, out: ResponseWriter) -> None:
        raise AssertionError("not reached")

    reader, writer = await asyncio.open_connection("127.0.0.1", await serve(handler))
    writer.write(b"NONSENSE\r\n\r\n" + REQUEST)
    head, _ = await _read_answer(reader)
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"Connection: close\r\n" in head
    assert await _at_eof(reader)
    writer.close()


async def test_stop_ends_idle_connections() -> None:
    async def handler(path: str, out: ResponseWriter) -> None:
        await out.answer(200, b"{}")

    relay = Relay(handler)
    port = await relay.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    await _read_answer(reader)
    await asyncio.wait_for(relay.stop(), timeout=2)
    assert await _at_eof(reader)
    writer.close()
