"""The stand-in portal for the benchmark: :class:`FakePortal`, plus stamped streams.

With :attr:`StampingPortal.stamped` set to ``(events, pace)``, a streamed text
answer is the portal's usual first chunk, then ``events`` content chunks sent every
``pace`` seconds, each carrying ``T<perf_counter_ns>Z`` taken just before it is
written, then the portal's usual finish, usage and ``[DONE]`` chunks. The client
(same process, same clock) finds each stamp in what it receives, so the delay of
every event is measured exactly, whatever the proxy did to the stream's shape.

:class:`FakePortal` sets ``TCP_NODELAY`` on its sockets (with Nagle on, a stream's
first chunk would wait for the client's delayed ACK, ~40 ms, and swamp every figure
here).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from qwen_oauth_mitm.portal import FakePortal
from qwen_oauth_mitm.portal.chat import _Answer


class StampingPortal(FakePortal):
    stamped: tuple[int, float] | None = None

    def answer(self, token: str, body: Any, headers: dict[str, str]) -> _Answer:
        result = super().answer(token, body, headers)
        stamped = self.stamped
        if result.status == 200 and result.stream is not None and stamped:
            head, tail = result.stream[0], result.stream[-3:]  # finish, usage, DONE
            result.stream = _StampedStream(head, tail, *stamped)
            result.delay = 0.0  # the stream paces itself, then stamps, then sends
        return result


class _StampedStream(list[bytes]):
    def __init__(self, head: bytes, tail: list[bytes], events: int, pace: float):
        super().__init__([head, *tail])
        self.head, self.tail, self.events, self.pace = head, tail, events, pace
        chunk = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": "coder-model",
            "choices": [
                {"index": 0, "delta": {"content": "@@@"}, "finish_reason": None}
            ],
        }
        self.before, self.after = (
            b"data: " + json.dumps(chunk).encode() + b"\n\n"
        ).split(b"@@@")

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        for _ in range(self.events):
            time.sleep(self.pace)
            yield b"%sT%dZ %s" % (self.before, time.perf_counter_ns(), self.after)
        yield from self.tail
