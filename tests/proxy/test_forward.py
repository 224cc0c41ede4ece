"""The forwarder against a mocked upstream: which account, what is retried."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from qwen_oauth_mitm.accounts import Account, AccountsFile
from qwen_oauth_mitm.config import Config
from qwen_oauth_mitm.errors import StoreError
from qwen_oauth_mitm.oauth import (
    OAuthClient,
    TokenManager,
    TokenSet,
    TransientAuthError,
)
from qwen_oauth_mitm.portal import FakePortal
from qwen_oauth_mitm.proxy.forward import Forwarder
from qwen_oauth_mitm.proxy.jobs import Job
from qwen_oauth_mitm.proxy.relay import Relay, ResponseWriter
from qwen_oauth_mitm.proxy.upstream import UpstreamClient
from qwen_oauth_mitm.rotation import Rotation, TrackerState, TrackerStore, tracker_file
from qwen_oauth_mitm.store import accounts_file
from qwen_oauth_mitm.translate import StreamTranslator, translate_request

from .scripted_upstream import ScriptedUpstream

Handler = Callable[[httpx.Request], httpx.Response]
COMPLETION = {
    "choices": [{"index": 0, "message": {"content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


class Chunks(httpx.AsyncByteStream):
    """An upstream body that arrives in pieces."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


class Recorder(ResponseWriter):
    """Collects what the forwarder writes instead of sending it."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body = b""
        self.started = self.finished = self.chunked = False
        self.bytes_sent = 0

    async def start(self, status: int, headers: Any, *, chunked: bool) -> None:
        self.status, self.headers = status, dict(headers)
        self.started, self.chunked = True, chunked

    async def write(self, data: bytes) -> None:
        self.body += data

    async def end(self) -> None:
        self.finished = True

    def json(self) -> Any:
        return json.loads(self.body)


def _key(label: str, **fields: Any) -> Account:
    now = time.time()
    data: dict[str, Any] = {"id": f"acct_{label}", "label": label, "kind": "key"}
    data |= {"access_token": SecretStr(f"sk-{label}"), "added_at": now}
    return Account.model_validate(data | {"updated_at": now} | fields)


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Callable[..., Forwarder]]:
    clients: list[ScriptedUpstream | OAuthClient] = []

    def build(accounts: list[Account], handler: Handler, **config: Any) -> Forwarder:
        store = accounts_file(tmp_path / "accounts.json")
        store.write(AccountsFile(accounts=tuple(accounts)))
        cfg = Config.model_validate(
            {"base_url": "https://portal.qwen.ai/v1", "rotation_strategy": "sequential"}
            | config
        )
        oauth = OAuthClient("http://oauth.invalid", "cid", trust_env=False)
        http = ScriptedUpstream(handler)
        clients.extend([oauth, http])
        return Forwarder(cfg, Rotation(cfg), TokenManager(store, oauth), None, http)

    yield build
    for client in clients:
        await client.aclose()


def _job(stream: bool = False) -> Job:
    t = translate_request({"model": "coder-model", "input": "hi", "stream": stream})
    return Job("f1", "responses", t.chat, t, None, stream)


def _refresh_of_a_raises(
    fwd: Forwarder, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    """acct_a's token can't be had (its refresh fails with ``error``); others can."""
    real = fwd.tokens.access_token

    async def access_token(
        account_id: str, wait: float | None = None, known: Account | None = None
    ) -> str:
        if account_id == "acct_a":
            raise error
        return await real(account_id, wait=wait, known=known)

    monkeypatch.setattr(fwd.tokens, "access_token", access_token)


def _by_token(answers: dict[str, list[httpx.Response]], seen: list[str]) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        token = request.headers["authorization"].removeprefix("Bearer ")
        seen.append(token)
        queue = answers.get(token) or []
        return queue.pop(0) if queue else httpx.Response(200, json=COMPLETION)

    return handle


async def test_a_5xx_fails_over_once(make: Callable[..., Forwarder]) -> None:
    seen: list[str] = []
    bad = {"sk-a": [httpx.Response(500)], "sk-b": [httpx.Response(502)]}
    fwd = make([_key("a"), _key("b"), _key("c")], _by_token(bad, seen))
    job, out = _job(), Recorder()
    await fwd.serve(job, out)
    assert seen == ["sk-a", "sk-b"]  # one failover, not two
    assert out.status == 502
    assert out.json()["error"]["type"]
    assert job.failed
    assert [a.outcome for a in job.attempts] == ["500", "502"]


async def test_a_request_looks_at_the_accounts_file_once(
    make: Callable[..., Forwarder], count_calls: Callable[[object, str], list[object]]
) -> None:
    # The pick reads the accounts (a stat of the file, a read if it changed);
    # the rotation's prune check and the token reuse that look: no second stat.
    seen: list[str] = []
    fwd = make([_key("a"), _key("b")], _by_token({}, seen))
    looks = count_calls(fwd.tokens.store, "signature")
    for n in (1, 2):
        job, out = _job(), Recorder()
        await fwd.serve(job, out)
        assert out.status == 200
        assert len(looks) == n
    assert seen == ["sk-a", "sk-a"]


async def test_a_connection_error_fails_over_to_the_next(
    make: Callable[..., Forwarder],
) -> None:
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        token = request.headers["authorization"].removeprefix("Bearer ")
        seen.append(token)
        if token == "sk-a":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json=COMPLETION)

    fwd = make([_key("a"), _key("b")], handle)
    job, out = _job(), Recorder()
    await fwd.serve(job, out)
    assert out.status == 200
    assert out.json()["output"][0]["content"][0]["text"] == "ok"
    assert job.comment() == (
        "qwen · acct b · responses→chat · failover from acct a (connect error)"
    )


async def test_a_client_error_is_passed_on_in_responses_shape(
    make: Callable[..., Forwarder],
) -> None:
    seen: list[str] = []
    body = {"error": {"code": "invalid_parameter", "message": "bad tools"}}
    bad = {"sk-a": [httpx.Response(400, json=body)]}
    fwd = make([_key("a"), _key("b")], _by_token(bad, seen))
    out = Recorder()
    await fwd.serve(_job(), out)
    assert seen == ["sk-a"]
    assert out.status == 400
    assert out.json()["error"]["message"] == "bad tools"


async def test_a_foreign_resource_url_is_never_contacted(
    make: Callable[..., Forwarder],
) -> None:
    hosts: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return httpx.Response(200, json=COMPLETION)

    evil = _key("evil", resource_url="portal.qwen.ai.evil.example")
    fwd = make([evil, _key("b")], handle, base_url=None)
    job, out = _job(), Recorder()
    await fwd.serve(job, out)
    assert hosts == ["portal.qwen.ai"]  # b's default base; evil's never
    assert [(a.label, a.outcome) for a in job.attempts] == [
        ("evil", "refused host"),
        ("b", "200"),
    ]
    assert out.status == 200


async def test_every_account_rate_limited_gives_429_with_retry_after(
    make: Callable[..., Forwarder],
) -> None:
    seen: list[str] = []
    limited = httpx.Response(429, headers={"Retry-After": "30"}, json={"error": {}})
    fwd = make(
        [_key("a")],
        _by_token({"sk-a": [limited]}, seen),
        max_rate_limit_wait_seconds=1,
    )
    job, out = _job(), Recorder()
    await fwd.serve(job, out)
    assert out.status == 429
    assert 29 <= int(out.headers["Retry-After"]) <= 30
    assert "a: " in out.json()["error"]["message"]


async def test_a_stream_is_translated_and_ended(
    make: Callable[..., Forwarder],
) -> None:
    chunks = [
        b'data: {"choices":[{"index":0,"delta":{"content":"he"}}]}\n\n',
        b'data: {"choices":[{"index":0,"delta":{"content":"y"},'
        b'"finish_reason":"stop"}]}\n\n',
        b"data: [DONE]\n\n",
    ]

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Chunks(chunks))

    fwd = make([_key("a")], handle)
    job, out = _job(stream=True), Recorder()
    await fwd.serve(job, out)
    assert out.chunked
    assert out.finished
    assert b"response.completed" in out.body
    assert not job.failed


async def test_a_stream_s_opening_is_rendered_while_the_upstream_thinks(
    make: Callable[..., Forwarder],
) -> None:
    job, out = _job(stream=True), Recorder()
    seen: list[object] = []

    class Thinking(Chunks):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            await asyncio.sleep(0)  # the upstream's think time: one loop turn
            seen.append(job.translator)
            async for chunk in super().__aiter__():
                yield chunk

    chunks = [
        b'data: {"choices":[{"index":0,"delta":{"content":"hey"},'
        b'"finish_reason":"stop"}]}\n\n',
        b"data: [DONE]\n\n",
    ]

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(job.translator)  # the request is out: none made before it
        return httpx.Response(200, stream=Thinking(chunks))

    fwd = make([_key("a")], handle)
    await fwd.serve(job, out)
    assert seen[0] is None
    translator = seen[1]
    assert isinstance(translator, StreamTranslator)
    assert translator is job.translator  # the one the stream used
    assert translator.outcome.response_id.encode() in out.body
    assert b"response.completed" in out.body


async def test_a_chat_job_has_no_translator(make: Callable[..., Forwarder]) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Chunks([b"data: {}\n\n"]))

    fwd = make([_key("a")], handle)
    job = Job("f1", "chat", {"model": "m", "stream": True}, None, None, True)
    await fwd.serve(job, Recorder())
    await asyncio.sleep(0)  # a callback, had one been scheduled
    assert job.translator is None


async def test_a_401_refreshes_and_retries_the_same_account(
    make: Callable[..., Forwarder], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    refreshed: list[str] = []
    fwd = make([_key("a"), _key("b")], _by_token({"sk-a": [httpx.Response(401)]}, seen))

    async def after_unauthorized(
        account_id: str, rejected: str, wait: float | None = None
    ) -> Account:
        refreshed.append(rejected)
        return _key("a")

    monkeypatch.setattr(fwd.tokens, "after_unauthorized", after_unauthorized)
    job, out = _job(), Recorder()
    await fwd.serve(job, out)
    assert refreshed == ["sk-a"]
    assert seen == ["sk-a", "sk-a"]
    assert out.status == 200
    assert (
        job.comment() == "qwen · acct a · responses→chat · retried after acct a (401)"
    )


class Broken(httpx.AsyncByteStream):
    """An upstream body that breaks off after its first chunk."""

    def __init__(self, first: bytes) -> None:
        self.first = first

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.first
        raise httpx.RemoteProtocolError("peer closed connection")


@pytest.mark.parametrize("stream", [True, False])
async def test_a_cut_answer_fails_and_counts_against_no_success(
    make: Callable[..., Forwarder], stream: bool
) -> None:
    first = b'data: {"choices":[{"index":0,"delta":{"content":"he"}}]}\n\n'

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Broken(first))

    fwd = make([_key("a")], handle)
    job, out = _job(stream=stream), Recorder()
    await fwd.serve(job, out)
    assert job.failed
    track = fwd.rotation.track("acct_a")
    assert track.last_success is None
    assert track.consecutive_failures == 1
    if stream:
        assert job.upstream_cut
        assert b"response.failed" in out.body
        assert b"response.completed" not in out.body
    else:  # cut before the client got a byte: failed over, and no other account
        assert out.status == 502
        assert [a.outcome for a in job.attempts] == ["200 cut"]


async def test_a_corrupt_accounts_file_is_a_clear_503(
    make: Callable[..., Forwarder], tmp_path: Path
) -> None:
    fwd = make([_key("a")], _by_token({}, []))
    (tmp_path / "accounts.json").write_text("{not json")
    job, out = _job(), Recorder()
    await fwd.serve(job, out)
    assert out.status == 503
    assert "accounts.json" in out.json()["error"]["message"]


# --- timeouts ---------------------------------------------------------------------

FAST = {"connect_seconds": 0.1, "first_byte_seconds": 0.2}


class Stalling(httpx.AsyncByteStream):
    """Chunks with a pause before each but the first."""

    def __init__(self, chunks: list[bytes], pause: float) -> None:
        self.chunks, self.pause = chunks, pause

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i, chunk in enumerate(self.chunks):
            if i:
                await asyncio.sleep(self.pause)
            yield chunk


SSE = [
    b'data: {"choices":[{"index":0,"delta":{"content":"he"}}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{"content":"llo"}}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
    b"data: [DONE]\n\n",
]


async def test_a_hang_before_the_headers_fails_over_without_a_health_penalty(
    make: Callable[..., Forwarder],
) -> None:
    seen: list[str] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        token = request.headers["authorization"].removeprefix("Bearer ")
        seen.append(token)
        if token == "sk-a":
            await asyncio.sleep(10)
        return httpx.Response(200, json=COMPLETION)

    # between_chunks is long: only first_byte may end the wait.
    timeouts = FAST | {"between_chunks_seconds": 30}
    fwd = make([_key("a"), _key("b")], handle, timeouts=timeouts)
    job, out = _job(), Recorder()
    start = time.monotonic()
    await fwd.serve(job, out)
    assert time.monotonic() - start < 2
    assert seen == ["sk-a", "sk-b"]
    assert out.status == 200
    assert (
        job.comment()
        == "qwen · acct b · responses→chat · failover from acct a (timeout)"
    )
    track = fwd.rotation.track("acct_a")
    assert track.consecutive_failures == 1
    assert track.health is None  # untouched: the service's fault, not the account's


async def test_a_hang_on_every_account_is_a_504_after_one_failover(
    make: Callable[..., Forwarder],
) -> None:
    async def handle(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(10)
        raise AssertionError("unreachable")

    fwd = make([_key("a"), _key("b"), _key("c")], handle, timeouts=FAST)
    job, out = _job(), Recorder()
    await fwd.serve(job, out)
    assert out.status == 504
    assert "no answer within 0.2 s" in out.json()["error"]["message"]
    assert [a.outcome for a in job.attempts] == ["timeout", "timeout"]


async def test_first_byte_does_not_bound_a_slow_stream(
    make: Callable[..., Forwarder],
) -> None:
    """Gaps under between_chunks pass, though the whole outlasts first_byte."""

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Stalling(SSE, 0.1))

    timeouts = FAST | {"between_chunks_seconds": 0.5}
    fwd = make([_key("a")], handle, timeouts=timeouts)
    job, out = _job(stream=True), Recorder()
    start = time.monotonic()
    await fwd.serve(job, out)
    assert time.monotonic() - start > 0.25
    assert not job.failed
    assert b"response.completed" in out.body
    assert out.finished


@pytest.mark.parametrize("kind", ["responses", "chat"])
async def test_a_stall_mid_stream_ends_it_promptly_and_not_as_complete(
    make: Callable[..., Forwarder], kind: str
) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Stalling(SSE, 10))

    # first_byte is long: only between_chunks may end the wait.
    timeouts = {"first_byte_seconds": 30, "between_chunks_seconds": 0.2}
    fwd = make([_key("a")], handle, timeouts=timeouts)
    job, out = _job(stream=True), Recorder()
    if kind == "chat":
        body = {"model": "coder-model", "messages": [], "stream": True}
        job = Job("f1", "chat", body, None, None, True)
    start = time.monotonic()
    await fwd.serve(job, out)
    assert time.monotonic() - start < 2
    assert job.failed
    assert job.upstream_cut
    assert job.error == "upstream stream broke (no data for 0.2 s)"
    assert fwd.rotation.track("acct_a").last_success is None
    if kind == "responses":
        events = [line for line in out.body.split(b"\n") if line.startswith(b"event:")]
        assert events[-2:] == [b"event: error", b"event: response.failed"]
        assert b"response.completed" not in out.body
        assert out.finished
    else:
        assert out.body == SSE[0]  # passed on as it came, then cut
        assert not out.finished  # no last chunk: mitmproxy sees a cut stream


async def test_a_stall_in_a_whole_answer_is_a_504(
    make: Callable[..., Forwarder],
) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Stalling([b'{"choices":', b"[]}"], 10))

    timeouts = {"between_chunks_seconds": 0.2}
    fwd = make([_key("a")], handle, timeouts=timeouts)
    job, out = _job(), Recorder()
    await fwd.serve(job, out)
    assert out.status == 504  # a timeout, as a hang before the headers is
    assert "no data for 0.2 s" in out.json()["error"]["message"]


async def test_timeouts_follow_the_config_of_the_moment(
    make: Callable[..., Forwarder],
) -> None:
    """A config change (mitmweb's option editor) reaches the next request: the
    timeouts go with each request, so the client needs no rebuilding."""

    async def handle(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.3)
        return httpx.Response(200, json=COMPLETION)

    fwd = make([_key("a")], handle, timeouts={"connect_seconds": 3})
    client = fwd.http
    assert isinstance(client, ScriptedUpstream)
    job, out = _job(), Recorder()
    await fwd.serve(job, out)
    assert out.status == 200
    fwd.config = fwd.config.model_copy(
        update={
            "timeouts": fwd.config.timeouts.model_copy(
                update={"connect_seconds": 0.05, "first_byte_seconds": 0.1}
            )
        }
    )
    job, out = _job(), Recorder()
    await fwd.serve(job, out)
    assert out.status == 504  # 0.3 s is now too late
    assert fwd.http is client
    assert [t.connect for t in client.timeouts] == [3, 0.05]
    assert [t.write for t in client.timeouts] == [3, 0.05]  # writing: connect_seconds
    assert [t.first_byte for t in client.timeouts] == [
        Config().timeouts.first_byte_seconds,
        0.1,
    ]


async def test_the_rotation_state_is_saved_off_the_event_loop(
    make: Callable[..., Forwarder], tmp_path: Path
) -> None:
    # The save fsyncs; on mitmproxy's loop it would stall every relayed stream.
    fwd = make([_key("a")], lambda request: httpx.Response(200, json=COMPLETION))
    tracker = TrackerStore(tracker_file(tmp_path / "tracker.json"), interval=0)
    writers: list[str] = []
    real_write = tracker.write

    def spy(snapshot: TrackerState, revision: int) -> bool:
        writers.append(threading.current_thread().name)
        return real_write(snapshot, revision)

    tracker.write = spy  # type: ignore[method-assign]
    fwd.tracker = tracker
    await fwd.serve(_job(), Recorder())
    await fwd.saved()
    assert writers, "a served request must lead to a save"
    assert threading.main_thread().name not in writers
    saved = TrackerState.model_validate_json((tmp_path / "tracker.json").read_bytes())
    today = saved.accounts["acct_a"].today
    assert today is not None
    assert today.requests == 1


async def test_a_failed_refresh_is_a_failure_at_no_health_cost(
    make: Callable[..., Forwarder], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    fwd = make([_key("a"), _key("b")], _by_token({}, seen))
    _refresh_of_a_raises(
        fwd, monkeypatch, TransientAuthError("the OAuth server did not answer in time")
    )
    for _ in range(3):
        job, out = _job(), Recorder()
        await fwd.serve(job, out)
        assert out.status == 200
        assert seen[-1] == "sk-b"
    accounts = list((await fwd.tokens.accounts()).accounts)
    a, b = fwd.rotation.status(accounts, time.time())
    # Sequential rotation moved on to b after the first failure: a was tried once.
    assert [x.outcome for x in job.attempts] == ["200"]
    assert a.health == Config().health_score.initial
    assert b.health > a.health
    snapshot = fwd.rotation.snapshot().accounts["acct_a"]
    assert snapshot.consecutive_failures == 1


async def test_a_client_hang_up_mid_stream_leaves_no_task_and_closes_upstream(
    tmp_path: Path,
) -> None:
    """The relay and the forwarder against the stand-in's slow stream, over real
    sockets: the client (mitmproxy's side of the relay) reads the start and hangs
    up. The stand-in sees its stream's connection closed long before the stream's
    end, and no task is left on the loop."""
    text = " ".join(f"word{i}" for i in range(40))
    with FakePortal(keys=["sk-a"], text=text, chunk_delay=0.1) as portal:
        store = accounts_file(tmp_path / "accounts.json")
        store.write(AccountsFile(accounts=(_key("a"),)))
        cfg = Config.model_validate({"base_url": portal.url})
        oauth = OAuthClient("http://oauth.invalid", "cid", trust_env=False)
        http = UpstreamClient()
        fwd = Forwarder(cfg, Rotation(cfg), TokenManager(store, oauth), None, http)
        job = _job(stream=True)
        relay = Relay(lambda path, out: fwd.serve(job, out))
        port = await relay.start()
        try:
            start = time.monotonic()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /f1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            seen = b""
            while seen.count(b"word") < 2:
                seen += await asyncio.wait_for(reader.read(4096), timeout=5)
            writer.close()  # hang up mid-stream
            await writer.wait_closed()
            deadline = start + 40 * 0.1 - 1  # well before the stream's end
            current = asyncio.current_task()
            while (
                portal.hangups < 1
                or relay._conns
                or {t for t in asyncio.all_tasks() if t is not current}
            ):
                assert time.monotonic() < deadline, asyncio.all_tasks()
                await asyncio.sleep(0.02)
            assert portal.statuses() == [200]
        finally:
            await relay.stop()
            await http.aclose()
            await oauth.aclose()


@pytest.mark.parametrize("kind", ["responses", "chat"])
async def test_an_upstream_error_that_quotes_the_key_never_shows_it(
    make: Callable[..., Forwarder], kind: str
) -> None:
    # Some gateways echo the key they refused; the client must not get it.
    key = "sk-live-0123456789abcdef"
    said = {"error": {"code": "bad", "message": f"Incorrect API key: {key}"}}
    account = _key("a", access_token=SecretStr(key))
    fwd = make([account], lambda request: httpx.Response(400, json=said))
    job, out = _job(), Recorder()
    job.kind = "chat" if kind == "chat" else "responses"
    await fwd.serve(job, out)
    assert out.status == 400
    assert key not in out.body.decode()
    assert "Incorrect API key: [redacted" in out.json()["error"]["message"]


async def test_a_rate_limit_that_quotes_the_key_keeps_it_out_of_the_saved_state(
    make: Callable[..., Forwarder],
) -> None:
    key = "sk-live-0123456789abcdef"
    said = {"error": {"code": "Throttling", "message": f"slow down, {key}"}}
    account = _key("a", access_token=SecretStr(key))
    answer = httpx.Response(429, json=said)
    fwd = make([account], lambda request: answer, max_rate_limit_wait_seconds=1)
    out = Recorder()
    await fwd.serve(_job(), out)
    assert out.status == 429
    cooldown = fwd.rotation.snapshot().accounts["acct_a"].cooldown
    assert cooldown is not None
    assert "slow down, [redacted" in (cooldown.detail or "")
    assert key not in fwd.rotation.snapshot().model_dump_json()


async def test_a_200_with_an_error_object_that_quotes_the_key_never_shows_it(
    make: Callable[..., Forwarder],
) -> None:
    key = "sk-live-0123456789abcdef"
    said = {"error": {"code": "bad", "message": f"Incorrect API key: {key}"}}
    account = _key("a", access_token=SecretStr(key))
    fwd = make([account], lambda request: httpx.Response(200, json=said))
    job, out = _job(), Recorder()
    await fwd.serve(job, out)
    assert out.status == 502
    assert key not in out.body.decode()
    assert key not in (job.error or "")  # the flow comment
    assert "Incorrect API key: [redacted" in out.json()["error"]["message"]


def _expired_oauth(label: str) -> Account:
    now = time.time()
    return Account.model_validate(
        {"id": f"acct_{label}", "label": label, "kind": "oauth"}
        | {"access_token": SecretStr(f"at-{label}"), "added_at": now}
        | {"refresh_token": SecretStr(f"rt-{label}"), "expires_at": now - 60}
        | {"updated_at": now}
    )


def _gated_refresh(
    monkeypatch: pytest.MonkeyPatch,
    fwd: Forwarder,
    gate: asyncio.Event,
    answer: TokenSet | Exception,
) -> list[str]:
    """The OAuth server answers ``answer`` to refreshes once ``gate`` is set."""
    sent: list[str] = []

    async def refresh(refresh_token: str) -> TokenSet:
        sent.append(refresh_token)
        await gate.wait()
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(fwd.tokens.client, "refresh", refresh)
    return sent


async def test_a_failed_refresh_shared_by_five_requests_counts_once(
    make: Callable[..., Forwarder], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five requests wait for one refresh, which fails: one failure for the
    account, not five (five would cool it down), and no request counted for it:
    none reached the upstream."""
    seen: list[str] = []
    fwd = make([_expired_oauth("a"), _key("b")], _by_token({}, seen))
    gate = asyncio.Event()
    error = TransientAuthError("the OAuth server answered HTTP 503")
    sent = _gated_refresh(monkeypatch, fwd, gate, error)
    jobs = [(_job(), Recorder()) for _ in range(5)]
    tasks = [asyncio.ensure_future(fwd.serve(j, o)) for j, o in jobs]
    while not sent:  # the refresh is under way: all five wait for it
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.gather(*tasks)
    assert sent == ["rt-a"]  # one refresh
    assert [o.status for _, o in jobs] == [200] * 5
    assert seen == ["sk-b"] * 5
    assert all(
        [a.outcome for a in j.attempts] == ["refresh failed", "200"] for j, _ in jobs
    )
    a = fwd.rotation.snapshot().accounts["acct_a"]
    assert a.consecutive_failures == 1
    assert a.cooldown is None
    assert a.today is not None
    assert a.today.requests == 0


@pytest.mark.parametrize(
    "error",
    [
        StoreError("accounts.json is locked", path=Path("accounts.json")),
        PermissionError("accounts.json: permission denied"),
    ],
    ids=["store", "os"],
)
async def test_a_local_file_error_at_refresh_costs_the_account_nothing(
    make: Callable[..., Forwarder],
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
) -> None:
    """Not the OAuth server's doing, nor the account's: skipped, not counted."""
    seen: list[str] = []
    fwd = make([_key("a"), _key("b")], _by_token({}, seen))
    _refresh_of_a_raises(fwd, monkeypatch, error)
    job, out = _job(), Recorder()
    await fwd.serve(job, out)
    assert out.status == 200
    assert [a.outcome for a in job.attempts] == ["refresh failed", "200"]
    a = fwd.rotation.snapshot().accounts["acct_a"]
    assert a.consecutive_failures == 0
    assert a.cooldown is None
    assert a.today is not None
    assert a.today.requests == 0


async def test_a_slow_refresh_fails_over_and_saves_its_tokens_later(
    make: Callable[..., Forwarder], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Requests wait ``refresh_seconds`` for a slow refresh, then fail over; the
    refresh goes on (one, shared) and saves what it got, rotated refresh token
    included, for the next demand."""
    seen: list[str] = []
    fwd = make(
        [_expired_oauth("a"), _key("b")],
        _by_token({}, seen),
        timeouts={"refresh_seconds": 0.1},
    )
    gate = asyncio.Event()
    renewed = TokenSet("at-a2", "rt-a2", expires_in=3600)
    sent = _gated_refresh(monkeypatch, fwd, gate, renewed)
    jobs = [(_job(), Recorder()) for _ in range(2)]
    async with asyncio.timeout(5):  # not the refresh's end: they stop waiting
        await asyncio.gather(*(fwd.serve(j, o) for j, o in jobs))
    assert [o.status for _, o in jobs] == [200, 200]
    assert all(
        [a.outcome for a in j.attempts] == ["refresh failed", "200"] for j, _ in jobs
    )
    assert seen == ["sk-b", "sk-b"]
    assert sent == ["rt-a"]  # both waited for the one refresh
    a = fwd.rotation.snapshot().accounts["acct_a"]
    assert a.consecutive_failures == 1  # one slow refresh, one failure
    later = asyncio.ensure_future(fwd.tokens.access_token("acct_a"))
    await asyncio.sleep(0.05)
    gate.set()  # the OAuth server answers at last
    assert await later == "at-a2"
    saved = accounts_file(tmp_path / "accounts.json").read().get("acct_a")
    assert saved is not None
    assert saved.refresh_token is not None
    assert saved.refresh_token.get_secret_value() == "rt-a2"
    assert sent == ["rt-a"]


# --- a 200 that is no answer, before the client got a byte -----------------------


def _chat_job() -> Job:
    body = {"model": "coder-model", "messages": [], "stream": True}
    return Job("f1", "chat", body, None, None, True)


async def _served_after_a_failover(
    make: Callable[..., Forwarder], first: httpx.Response, job: Job, **config: Any
) -> Recorder:
    """Account a answers ``first``, b a good stream (or whole answer): the client
    must get b's, and a must have no success and no health penalty."""
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"].removeprefix("Bearer "))
        if seen[-1] == "sk-a":
            return first
        if job.stream:
            return httpx.Response(200, stream=Chunks(list(SSE)))
        return httpx.Response(200, json=COMPLETION)

    fwd = make([_key("a"), _key("b")], handle, **config)
    out = Recorder()
    started = time.monotonic()
    await fwd.serve(job, out)
    assert time.monotonic() - started < 2
    assert seen == ["sk-a", "sk-b"]
    assert (out.status, job.failed, job.served_by) == (200, False, "b")
    a = fwd.rotation.track("acct_a")
    assert (a.last_success, a.consecutive_failures, a.health) == (None, 1, None)
    assert fwd.rotation.track("acct_b").last_success is not None
    return out


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("stalled", [True, False])
async def test_a_stall_or_cut_before_the_first_event_fails_over(
    make: Callable[..., Forwarder], stream: bool, stalled: bool
) -> None:
    """After the 200 headers, before the first event (or the whole body): nothing
    was sent, so like a hang before the headers, another account."""
    keep_alive = b": keep-alive\n\n" if stream else b'{"choices":'
    body: httpx.AsyncByteStream = (
        Stalling([keep_alive, SSE[0]], 10) if stalled else Broken(keep_alive)
    )
    ctype = "text/event-stream" if stream else "application/json"
    first = httpx.Response(200, headers={"content-type": ctype}, stream=body)
    job = _job(stream=stream)
    timeouts = {"between_chunks_seconds": 0.2}
    out = await _served_after_a_failover(make, first, job, timeouts=timeouts)
    outcome = "200 stalled" if stalled else "200 cut"
    assert [a.outcome for a in job.attempts] == [outcome, "200"]
    assert (b"response.completed" in out.body) is stream


@pytest.mark.parametrize("kind", ["responses", "chat"])
@pytest.mark.parametrize(
    "chunks",
    [[], [b": keep-alive\n\n", b"\n\n"], [b"data: [DONE]\n\n"]],
    ids=["empty", "comments", "done"],
)
async def test_a_200_stream_with_no_data_fails_over(
    make: Callable[..., Forwarder], kind: str, chunks: list[bytes]
) -> None:
    """Relayed, it passed for a complete answer (a chat client got an empty 200)."""
    first = httpx.Response(
        200, headers={"content-type": "text/event-stream"}, stream=Chunks(chunks)
    )
    job = _job(stream=True) if kind == "responses" else _chat_job()
    out = await _served_after_a_failover(make, first, job)
    assert [a.outcome for a in job.attempts] == ["200 no events", "200"]
    if kind == "responses":
        assert b"response.completed" in out.body
    else:
        assert out.body == b"".join(SSE)


async def test_a_200_stream_with_no_data_on_the_only_account_is_a_502(
    make: Callable[..., Forwarder],
) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Chunks([b": keep-alive\n\n"]))

    fwd = make([_key("a")], handle)
    job, out = _chat_job(), Recorder()
    await fwd.serve(job, out)
    assert (out.status, job.failed) == (502, True)
    assert out.json()["error"]["code"] == "bad_upstream_answer"
    assert fwd.rotation.track("acct_a").last_success is None


async def _served_after_a_200_saying(
    make: Callable[..., Forwarder], said: object
) -> tuple[Forwarder, Job, Recorder, list[str]]:
    """Accounts a and b, a answering 200 with ``said``: one request served; the
    tokens the upstream saw, in order."""
    seen: list[str] = []
    fwd = make(
        [_key("a"), _key("b")],
        _by_token({"sk-a": [httpx.Response(200, json=said)]}, seen),
    )
    job, out = _job(), Recorder()
    await fwd.serve(job, out)
    return fwd, job, out, seen


async def test_a_200_error_object_with_an_odd_status_fails_over(
    make: Callable[..., Forwarder],
) -> None:
    """A status of "²" passed str.isdigit() and raised in int(): a "502 Proxy
    error", no failover, the pick never settled."""
    said = {"error": {"status": "²", "message": "busy"}}
    fwd, job, out, seen = await _served_after_a_200_saying(make, said)
    assert seen == ["sk-a", "sk-b"]
    assert (out.status, job.served_by) == (200, "b")
    assert [a.outcome for a in job.attempts] == ["200 with error 502", "200"]
    assert fwd.rotation.track("acct_a").consecutive_failures == 1


async def test_a_200_error_object_that_blames_the_request_is_a_400_at_once(
    make: Callable[..., Forwarder],
) -> None:
    """A content-moderation refusal under a 200: another account would refuse it
    too, so no failover and no cooldown; the client is told."""
    said = {"error": {"code": "data_inspection_failed", "message": "Inappropriate"}}
    fwd, job, out, seen = await _served_after_a_200_saying(make, said)
    assert seen == ["sk-a"]
    assert out.status == 400
    assert "Inappropriate" in out.body.decode()
    assert [a.outcome for a in job.attempts] == ["200 with error 400"]
    assert fwd.rotation.track("acct_a").cooldown is None
