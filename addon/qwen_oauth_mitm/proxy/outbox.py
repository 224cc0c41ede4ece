"""Where the forwarder writes a relayed answer: :class:`Outbox`.

Two things happen here, both for the time to the first byte.

**The upstream request does not wait for the relay hop.** The ``request`` hook
starts serving a job at once (the account pick, the token, the upstream request)
while mitmproxy is still sending the rewritten request to the relay; the two
overlap. The forwarder writes to the job's outbox, whose first write waits
until the relay connection for that flow has arrived (:meth:`Outbox.attach`).
Measured on loopback, the hop took ~0.6 ms and the upstream's first event ~1.5 ms
after the request: with both in parallel the hop no longer counts.

**The first bytes go first.** mitmproxy and the relay share one event loop.
An upstream answer sent in one burst was translated chunk after chunk with the
loop hardly free in between, while mitmproxy's own steps to pass the head and
first event on (read them from the relay, run the ``responseheaders`` hooks,
encrypt, send) waited behind the whole burst: the client got its first byte
only once the last chunk was translated. So after the first body bytes the
outbox waits, at most :data:`HEAD_WAIT`, until the ``responseheaders`` hook has
seen the head (:meth:`Outbox.head_taken`), then yields the loop
:data:`HEAD_YIELDS` times, time for mitmproxy to send the head and those bytes
to the client, before the forwarder reads on. A burst is delayed by that much
once per answer, never chunk by chunk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Protocol

from qwen_oauth_mitm.proxy.relay import ResponseWriter

ATTACH_WAIT = 60.0
"""Seconds a job waits for its relay connection before it gives up (mitmproxy
ends the flow with an error long before, which cancels the job)."""
HEAD_WAIT = 0.05
"""Seconds the first bytes wait for mitmproxy's ``responseheaders`` hook."""
HEAD_YIELDS = 2
"""Loop turns left to mitmproxy after that hook, before reading on: the hook's
task ends, then the HTTP layer sends the head and body (measured: one or two)."""


class AnswerWriter(Protocol):
    """Where the forwarder writes: a :class:`ResponseWriter`, or an :class:`Outbox`."""

    @property
    def started(self) -> bool: ...

    async def start(
        self, status: int, headers: Iterable[tuple[str, str]], *, chunked: bool
    ) -> None: ...

    async def write(self, data: bytes) -> None: ...

    async def end(self) -> None: ...

    async def answer(
        self,
        status: int,
        body: bytes,
        content_type: str = ...,
        extra: Iterable[tuple[str, str]] = ...,
    ) -> None: ...


class Outbox:
    """An answer writer for a job that may start before its relay connection.

    Everything is passed on to the :class:`ResponseWriter` given to :meth:`attach`;
    until then the first call waits for it (``ConnectionError`` after
    :data:`ATTACH_WAIT` seconds).
    """

    def __init__(self, *, attach_wait: float | None = None) -> None:
        self._out: ResponseWriter | None = None
        self._attached = asyncio.Event()
        self._head_taken = asyncio.Event()
        self._attach_wait = ATTACH_WAIT if attach_wait is None else attach_wait
        self._first_written = False

    @property
    def started(self) -> bool:
        return self._out is not None and self._out.started

    def attach(self, out: ResponseWriter) -> None:
        """The relay connection for this job has arrived: write to ``out``."""
        if self._out is not None:
            raise RuntimeError("an outbox is attached once")
        self._out = out
        self._attached.set()

    def head_taken(self) -> None:
        """mitmproxy's ``responseheaders`` hook has the head of the answer."""
        self._head_taken.set()

    async def start(
        self, status: int, headers: Iterable[tuple[str, str]], *, chunked: bool
    ) -> None:
        out = self._out or await self._target()
        await out.start(status, headers, chunked=chunked)

    async def write(self, data: bytes) -> None:
        out = self._out or await self._target()  # no coroutine a chunk once attached
        await out.write(data)
        if data and not self._first_written:
            self._first_written = True
            await self._let_head_through()

    async def end(self) -> None:
        out = self._out or await self._target()
        await out.end()

    async def answer(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        extra: Iterable[tuple[str, str]] = (),
    ) -> None:
        # Whole: nothing follows that the head would wait behind.
        out = await self._target()
        await out.answer(status, body, content_type, extra)

    async def _target(self) -> ResponseWriter:
        if self._out is None:
            try:
                async with asyncio.timeout(self._attach_wait):
                    await self._attached.wait()
            except TimeoutError:
                raise ConnectionError("the relay connection never came") from None
        assert self._out is not None
        return self._out

    async def _let_head_through(self) -> None:
        try:
            async with asyncio.timeout(HEAD_WAIT):
                await self._head_taken.wait()
        except TimeoutError:
            return  # mitmproxy is busy elsewhere: no point in waiting longer
        for _ in range(HEAD_YIELDS):
            await asyncio.sleep(0)
