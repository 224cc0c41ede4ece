"""The outbox: writes wait for the relay connection; the first bytes go first."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

import pytest

from qwen_oauth_mitm.proxy import outbox as outbox_module
from qwen_oauth_mitm.proxy.outbox import HEAD_WAIT, Outbox
from qwen_oauth_mitm.proxy.relay import ResponseWriter


class Recorder(ResponseWriter):
    """Records the calls an outbox passes on, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.started = False

    async def start(
        self, status: int, headers: Iterable[tuple[str, str]], *, chunked: bool
    ) -> None:
        self.started = True
        self.calls.append(("start", status, chunked))

    async def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    async def end(self) -> None:
        self.calls.append(("end",))


async def _turns(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_writes_wait_for_the_relay_connection_then_go_through_in_order() -> None:
    box, out = Outbox(), Recorder()
    box.head_taken()  # not what this test is about

    async def serve() -> None:
        await box.start(200, [], chunked=True)
        await box.write(b"one")
        await box.write(b"two")
        await box.end()

    task = asyncio.create_task(serve())
    await _turns()
    assert (task.done(), box.started) == (False, False)
    box.attach(out)
    await asyncio.wait_for(task, 1)
    assert box.started
    assert out.calls == [
        ("start", 200, True),
        ("write", b"one"),
        ("write", b"two"),
        ("end",),
    ]


async def test_a_whole_answer_waits_for_the_connection_too() -> None:
    box, out = Outbox(), Recorder()
    task = asyncio.create_task(box.answer(429, b"{}"))
    await _turns()
    assert out.calls == []
    box.attach(out)
    await asyncio.wait_for(task, 1)
    assert out.calls == [("start", 429, False), ("write", b"{}"), ("end",)]


async def test_a_connection_that_never_comes_is_a_connection_error() -> None:
    box = Outbox(attach_wait=0.05)
    with pytest.raises(ConnectionError, match="never came"):
        await box.answer(200, b"{}")


async def test_an_outbox_is_attached_once() -> None:
    box = Outbox()
    box.attach(Recorder())
    with pytest.raises(RuntimeError):
        box.attach(Recorder())


async def test_the_first_bytes_wait_until_mitmproxy_has_the_head() -> None:
    box, out = Outbox(), Recorder()
    box.attach(out)
    await box.start(200, [], chunked=True)
    first = asyncio.create_task(box.write(b"first"))
    await _turns()
    assert out.calls[-1] == ("write", b"first")  # sent at once...
    assert not first.done()  # ...but the forwarder does not read on yet
    box.head_taken()
    await asyncio.wait_for(first, 1)
    # Later writes never wait.
    await asyncio.wait_for(box.write(b"second"), 0.01)
    assert out.calls[-1] == ("write", b"second")


async def test_the_wait_for_the_head_is_bounded() -> None:
    box = Outbox()
    box.attach(Recorder())
    began = time.monotonic()
    await box.write(b"first")  # head_taken() never comes
    waited = time.monotonic() - began
    assert HEAD_WAIT * 0.8 <= waited < HEAD_WAIT + 0.5


async def test_mitmproxy_gets_loop_turns_after_the_head() -> None:
    box = Outbox()
    box.attach(Recorder())
    box.head_taken()
    turns = 0

    async def count() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    counter = asyncio.create_task(count())
    await asyncio.sleep(0)
    before = turns
    await box.write(b"first")
    after = turns
    counter.cancel()
    assert after - before >= outbox_module.HEAD_YIELDS
