"""One kept-alive upstream connection and what reads from it (for :mod:`.upstream`).

- :class:`Reader`: an asyncio stream reader that tells the pool of bytes or an end
  of file while its connection is idle, and counts the bytes in;
- :class:`Connection`: the reader and writer of one connection, with its pool key;
- :class:`GapTimer`: one lazily moved timer per body, bounding each wait for a
  chunk (see :meth:`.upstream.UpstreamResponse.aiter_raw`);
- :func:`where`: ``host:port`` of a pool key, the only part of a request that
  messages name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from qwen_oauth_mitm.proxy.http11 import PoolKey


class Reader(asyncio.StreamReader):
    """A stream reader that calls :attr:`on_idle_event` (set while its connection
    is idle in the pool) when bytes, an end of file or an error arrive, and counts
    the bytes in (:attr:`fed`) so the client, counting those it read
    (:attr:`taken`), knows if any are left over."""

    on_idle_event: Callable[[], None] | None = None
    fed = 0
    taken = 0

    def feed_data(self, data: bytes) -> None:  # type: ignore[override]
        self.fed += len(data)
        super().feed_data(data)
        self._idle_event()

    def feed_eof(self) -> None:
        super().feed_eof()
        self._idle_event()

    def set_exception(self, exc: Exception) -> None:
        super().set_exception(exc)
        self._idle_event()

    def _idle_event(self) -> None:
        hook = self.on_idle_event
        if hook is not None:
            self.on_idle_event = None
            hook()


class Connection:
    __slots__ = ("idle_since", "key", "reader", "writer")

    def __init__(
        self, key: PoolKey, reader: Reader, writer: asyncio.StreamWriter
    ) -> None:
        self.key = key
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def usable(self) -> bool:
        """Not closed by either side, as far as we have heard."""
        reader = self.reader
        return not (
            self.writer.is_closing()
            or reader.at_eof()
            or reader.exception() is not None
        )

    def close(self) -> None:
        self.reader.on_idle_event = None
        self.writer.close()


class GapTimer:
    """Bounds each wait for a chunk to ``gap`` seconds with one timer per body.

    :meth:`ask` (a chunk is wanted) only notes the time; the timer, when it fires,
    looks at the wait under way: over ``gap``, the reader is given a
    ``TimeoutError`` (raised from the read that waits; the connection is then
    closed); otherwise it is set again for that wait's deadline (none while the
    consumer holds a chunk: the next ask sets one). It always fires at or before
    the deadline of the wait under way, so a stream that keeps flowing costs one
    timer event per ``gap`` seconds, not a timer per chunk.
    """

    __slots__ = ("_gap", "_handle", "_loop", "_reader", "asked")

    def __init__(self, reader: asyncio.StreamReader, gap: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._reader = reader
        self._gap = gap
        self._handle: asyncio.TimerHandle | None = None
        self.asked: float | None = None
        """When the chunk under way was asked for; None while none is."""

    def ask(self) -> None:
        now = self._loop.time()
        self.asked = now
        if self._handle is None:
            self._handle = self._loop.call_at(now + self._gap, self._fire)

    def _fire(self) -> None:
        now = self._loop.time()
        asked = self.asked
        if asked is None:  # the consumer holds a chunk: the next ask sets a timer
            self._handle = None
        elif now >= asked + self._gap:
            self._handle = None
            self._reader.set_exception(TimeoutError(f"no data for {self._gap:g} s"))
        else:
            self._handle = self._loop.call_at(asked + self._gap, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def where(key: PoolKey) -> str:
    """``host:port`` of a pool key, for messages (never a path or a header)."""
    return f"{key[1]}:{key[2]}"
