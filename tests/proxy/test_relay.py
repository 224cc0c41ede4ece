"""The relay's HTTP/1.1 framing, malformed requests, and hang-ups."""

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


async def _exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read()
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
    assert b"Connection: close" in head
    assert body == b"9\r\ndata: 1\n\n\r\n9\r\ndata: 2\n\n\r\n0\r\n\r\n"
    assert paths == ["/flow-1"]


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

    answer = await _exchange(await serve(handler), b"NONSENSE\r\n\r\n")
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
