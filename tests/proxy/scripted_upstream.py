"""An :class:`~qwen_oauth_mitm.proxy.upstream_api.Upstream` of httpx handlers.

The forwarder's tests script upstream answers as ``httpx.MockTransport`` handlers
(``httpx.Response``, bodies that stall or raise). This adapter serves them through
the forwarder's upstream protocol, with what the real client does around them:

- ``first_byte_timeout`` bounds the handler (a handler that sleeps is a hang
  before the headers): :class:`UpstreamTimeout`;
- ``gap`` bounds each body chunk: ``TimeoutError``;
- httpx's errors become ours: ``ConnectError`` an :class:`UpstreamConnectError`,
  ``RemoteProtocolError``/``ReadError`` (from the handler or mid-body) an
  :class:`UpstreamProtocolError`.

Every request's timeouts are kept in :attr:`ScriptedUpstream.timeouts`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass

import httpx

from qwen_oauth_mitm.proxy.upstream_api import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)

Handler = (
    Callable[[httpx.Request], httpx.Response]
    | Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]
)


@dataclass(frozen=True)
class Timeouts:
    connect: float
    write: float
    first_byte: float


def _ours(error: httpx.HTTPError) -> UpstreamError:
    if isinstance(error, httpx.ConnectError):
        return UpstreamConnectError(str(error))
    if isinstance(error, httpx.RemoteProtocolError | httpx.ReadError):
        return UpstreamProtocolError(str(error))
    raise AssertionError(f"no Upstream error for {type(error).__name__}")


class ScriptedAnswer:
    """An ``httpx.Response`` as an :class:`UpstreamAnswer`."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status_code = response.status_code
        self.headers = response.headers
        self.closed = False

    def aiter_raw(self, *, gap: float | None = None) -> AsyncGenerator[bytes]:
        return self._bounded(self._response.aiter_raw(), gap)

    def aiter_bytes(self, *, gap: float | None = None) -> AsyncGenerator[bytes]:
        return self._bounded(self._response.aiter_bytes(), gap)

    async def aread(self, *, gap: float | None = None) -> bytes:
        return b"".join([chunk async for chunk in self.aiter_bytes(gap=gap)])

    async def aclose(self) -> None:
        self.closed = True
        await self._response.aclose()

    @staticmethod
    async def _bounded(
        chunks: AsyncIterator[bytes], gap: float | None
    ) -> AsyncGenerator[bytes]:
        try:
            while True:
                async with asyncio.timeout(gap):
                    try:
                        chunk = await anext(chunks)
                    except StopAsyncIteration:
                        return
                    except httpx.HTTPError as e:
                        raise _ours(e) from e
                yield chunk
        finally:
            if isinstance(chunks, AsyncGenerator):
                await chunks.aclose()


class ScriptedUpstream:
    """Answers each request with ``handler``'s response (see the module docstring)."""

    def __init__(self, handler: Handler) -> None:
        self._client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        self.timeouts: list[Timeouts] = []
        self.answers: list[ScriptedAnswer] = []

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
    ) -> ScriptedAnswer:
        self.timeouts.append(
            Timeouts(connect_timeout, write_timeout, first_byte_timeout)
        )
        request = self._client.build_request(method, url, headers=headers, content=body)
        try:
            async with asyncio.timeout(first_byte_timeout):
                response = await self._client.send(request, stream=True)
        except TimeoutError:
            raise UpstreamTimeout(first_byte_timeout) from None
        except httpx.HTTPError as e:
            raise _ours(e) from e
        answer = ScriptedAnswer(response)
        self.answers.append(answer)
        return answer

    async def aclose(self) -> None:
        await self._client.aclose()
