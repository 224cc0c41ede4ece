"""Serving one relayed request: pick an account, swap the token, send, fail over.

The loop, per request:

1. :meth:`Rotation.pick` (with the conversation key). Nothing usable: wait up to
   ``max_rate_limit_wait_seconds`` (0: no limit) for the earliest account, else
   answer 429 with ``Retry-After`` and every account's state.
2. A fresh token from :class:`TokenManager` (single-flight refresh, waited for
   at most ``timeouts.refresh_seconds``: a slower one goes on in the background
   and saves its tokens). An account that needs a re-login, whose refresh failed,
   or whose API base is not an allowed host is skipped for this request (a
   refresh that failed or was too slow counts, once per refresh attempt, as a
   failure that is not the account's fault: no health penalty, but it moves
   sequential rotation on, and repeated ones cool the account down).
3. ``POST {api base}/chat/completions`` with our own headers (never the client's
   Authorization, cookies or SDK fingerprint).
4. 429/quota: the account cools down, the next one is tried. 401: one refresh and
   one retry on the same account. 5xx, a connection error or no answer within
   ``first_byte_seconds`` (nothing sent to the client yet): fail over once,
   costing the account no health of its own. Other errors go to the client.
5. 200: its opening (the whole body, or a stream's first event) is judged first
   (:mod:`.opening`): an error object under the 200 is handled as the error
   status it stands for (a quota: cooldown and the next account), garbage (HTML,
   invalid JSON) like a 5xx. Then streamed (translated by :class:`StreamTranslator`
   for Responses requests, passed through for chat) chunk by chunk; or translated
   whole.

Timeouts (``timeouts.*``, read from the current config for every request, so a
change at run time needs no new client): ``connect_seconds`` to connect (and to
write the request), ``first_byte_seconds`` from the moment the request is sent
until the response headers arrive, ``between_chunks_seconds`` for each gap between
two body chunks. The upstream client (:mod:`.upstream`) bounds them all itself.

Once the first byte went to the client, nothing is retried: an upstream that dies
or stalls mid-stream gives the Responses client ``error`` + ``response.failed``
(the translator sees the end of a stream without a finish), a chat client a cut
chunked body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Literal

from qwen_oauth_mitm import redact
from qwen_oauth_mitm.accounts import Account
from qwen_oauth_mitm.config import Config, parse_timezone
from qwen_oauth_mitm.errors import QwenError
from qwen_oauth_mitm.oauth import NeedsRelogin, TokenManager, TransientAuthError
from qwen_oauth_mitm.oauth.tokens import RefreshFailed
from qwen_oauth_mitm.proxy.jobs import Attempt, Job, error_body
from qwen_oauth_mitm.proxy.opening import (
    Refusal,
    StreamOpening,
    is_document,
    judge_stream,
    judge_whole,
)
from qwen_oauth_mitm.proxy.outbox import AnswerWriter
from qwen_oauth_mitm.proxy.scope import DisallowedHost, api_base
from qwen_oauth_mitm.proxy.upstream_api import (
    Upstream,
    UpstreamAnswer,
    UpstreamError,
    UpstreamTimeout,
)
from qwen_oauth_mitm.rotation import (
    AllUnavailable,
    Pick,
    Rotation,
    TrackerStore,
    classify_error,
    wait_before_retry,
)
from qwen_oauth_mitm.tasks import spawn
from qwen_oauth_mitm.translate import (
    StreamTranslator,
    TranslationError,
    random_ids,
    translate_response,
    upstream_error_body,
)

log = logging.getLogger(__name__)

Clock = Callable[[], float]


def upstream_headers(config: Config, token: str, *, stream: bool) -> dict[str, str]:
    """What the official Qwen Code CLI sends, plus our token."""
    h = config.upstream_headers
    return {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Accept": "text/event-stream" if stream else "application/json",
        "Accept-Encoding": "identity",
        "User-Agent": h.user_agent,
        "X-DashScope-UserAgent": h.user_agent,
        "X-DashScope-CacheControl": h.dashscope_cache_control,
        "X-DashScope-AuthType": h.dashscope_auth_type,
    }


MAX_ROUNDS = 64
"""Bound on picks per request, should an upstream answer 429s of 0 seconds."""
WAIT_MARGIN = 0.05

Step = Literal["done", "next", "stop"]
"""After one attempt: answered; try the next pick; give up with the last error."""


@dataclass
class _State:
    """What one request has learned so far."""

    skip: set[str] = field(default_factory=set)
    """Accounts left out for this request (beyond what cooldowns exclude)."""
    auth_retried: set[str] = field(default_factory=set)
    pinned: str | None = None
    """Retry on this account next (after a 401 and a refresh)."""
    failed_over: bool = False
    waited: float = 0.0
    last: tuple[int, bytes] | None = None
    """The last upstream error (status, body), answered if nothing works."""


class Forwarder:
    """Serves relayed jobs; owns nothing but references (the addon owns them)."""

    def __init__(
        self,
        config: Config,
        rotation: Rotation,
        tokens: TokenManager,
        tracker: TrackerStore | None,
        http: Upstream,
        *,
        clock: Clock = time.time,
    ) -> None:
        self.config = config
        self.rotation = rotation
        self.tokens = tokens
        self.tracker = tracker
        self.http = http
        self.clock = clock
        self._signature: object = None
        self._saving: asyncio.Task[bool] | None = None

    async def _accounts(self) -> list[Account]:
        accounts = list((await self.tokens.accounts()).accounts)
        signature = self.tokens.seen_signature
        if signature != self._signature:
            self._signature = signature
            self.rotation.prune(accounts)
        return accounts

    def _save(self) -> None:
        # The write fsyncs (milliseconds): it runs in a thread, one at a time, so a
        # save never stalls the streams relayed on mitmproxy's event loop. The
        # snapshot is taken here, on the loop, while the engine is consistent.
        if self.tracker is None or not (self._saving is None or self._saving.done()):
            return
        if self.tracker.due(self.rotation, time.monotonic()):
            snapshot, revision = self.rotation.snapshot(), self.rotation.revision
            self._saving = spawn(
                asyncio.to_thread(self.tracker.write, snapshot, revision)
            )

    async def saved(self) -> None:
        """Wait for a save in progress (before the final save at shutdown)."""
        if self._saving is not None:
            with contextlib.suppress(Exception):
                await self._saving

    async def serve(self, job: Job, out: AnswerWriter) -> None:
        try:
            await self._serve(job, out)
        except ConnectionError:
            log.info("flow %s: the client went away", job.flow_id)
            job.failed, job.error = True, "the client went away"
        except QwenError as e:  # e.g. an unreadable accounts file: said plainly
            message = redact.redact(str(e))
            log.error("flow %s: %s", job.flow_id, message)
            await self._fail(job, out, 503, message)
        except Exception as e:
            log.exception("flow %s: proxy error", job.flow_id)
            await self._fail(job, out, 502, f"Proxy error: {redact.redact(str(e))}")
        finally:
            self._save()

    async def _serve(self, job: Job, out: AnswerWriter) -> None:
        st = _State()
        for _ in range(MAX_ROUNDS):
            pick = await self._pick(job, st)
            if isinstance(pick, AllUnavailable):
                await self._unavailable(job, out, pick, self.clock(), st.last)
                return
            step = await self._attempt(job, pick, st, out)
            if step == "done":
                return
            if step == "stop":
                break
        status, body = st.last or (
            502,
            error_body("No account could serve the request."),
        )
        await self._upstream_error(job, out, status, body)

    async def _pick(self, job: Job, st: _State) -> Pick | AllUnavailable:
        """The next account, waiting (bounded) while every account cools down."""
        while True:
            accounts = await self._accounts()
            now = self.clock()
            pool = [a for a in accounts if a.id == st.pinned] if st.pinned else accounts
            pick = self.rotation.pick(
                pool, now, conversation_key=job.conversation_key, exclude=st.skip
            )
            pinned, st.pinned = st.pinned, None
            if not isinstance(pick, AllUnavailable):
                return pick
            if pinned:
                continue  # the account to retry is gone or cooling: any other
            delay = wait_before_retry(
                pick,
                now,
                waited=st.waited,
                max_wait=self.config.max_rate_limit_wait_seconds,
            )
            if delay is None:
                return pick
            log.info("all accounts are cooling down; waiting %.1f s", delay)
            # A little past the moment, so the pick after the wait finds it usable.
            await asyncio.sleep(delay + WAIT_MARGIN)
            st.waited += delay + WAIT_MARGIN

    async def _attempt(
        self, job: Job, pick: Pick, st: _State, out: AnswerWriter
    ) -> Step:
        """Send the request with ``pick``'s account and settle the pick."""
        account = pick.account
        try:
            base = api_base(account, self.config)
        except DisallowedHost as e:
            log.error("%s", e)
            self._skip(job, pick, st, "refused host")
            st.last = (502, error_body(str(e)))
            return "next"
        token = await self._token(job, pick, st)
        if token is None:
            return "next"
        cfg = self.config  # one config for the whole attempt
        url = f"{base}/chat/completions"
        log.debug(
            "flow %s: account %s: POST %s (stream=%s, timeouts %s)",
            job.flow_id,
            account.label,
            url,
            job.stream,
            cfg.timeouts,
        )
        started = time.monotonic()
        t = cfg.timeouts
        if job.translator is None and job.translated is not None and job.stream:
            # Runs when this task first waits: for the answer on a kept-alive
            # connection (the request is out by then), on a new one while it
            # connects. Either way the loop would only be waiting.
            asyncio.get_running_loop().call_soon(self._prepare_translator, job)
        try:
            response = await self.http.send(
                "POST",
                url,
                upstream_headers(cfg, token, stream=job.stream),
                json.dumps(job.chat_body, separators=(",", ":")).encode(),
                connect_timeout=t.connect_seconds,
                write_timeout=t.connect_seconds,
                first_byte_timeout=t.first_byte_seconds,
            )
        except UpstreamTimeout as e:
            log.warning("account %s: upstream %s", account.label, e)
            self.rotation.record_failure(
                pick, self.clock(), account_fault=False, detail="first byte timeout"
            )
            job.attempts.append(Attempt(account.label, "timeout"))
            st.last = (504, error_body(f"The upstream sent {e}."))
            return self._fail_over_once(account.id, st)
        except UpstreamError as e:
            log.warning("account %s: %s: %s", account.label, type(e).__name__, e)
            self.rotation.record_failure(
                pick, self.clock(), account_fault=False, detail=type(e).__name__
            )
            job.attempts.append(Attempt(account.label, "connect error"))
            st.last = (502, error_body(f"The upstream could not be reached: {e}"))
            return self._fail_over_once(account.id, st)
        log.debug(
            "flow %s: account %s: upstream %d after %.2f s",
            job.flow_id,
            account.label,
            response.status_code,
            time.monotonic() - started,
        )
        if response.status_code == 200:
            return await self._answer_200(job, pick, st, token, response, out)
        try:
            body = await response.aread(gap=t.between_chunks_seconds)
        except (UpstreamError, TimeoutError) as e:
            body = b""  # the status says enough
            log.debug("flow %s: error body unread: %s", job.flow_id, type(e).__name__)
        finally:
            await response.aclose()
        refusal = Refusal(response.status_code, body, str(response.status_code))
        return await self._after_error(job, pick, st, token, response, refusal)

    async def _answer_200(
        self,
        job: Job,
        pick: Pick,
        st: _State,
        token: str,
        response: UpstreamAnswer,
        out: AnswerWriter,
    ) -> Step:
        """Judge the answer's opening, then relay it (see :mod:`.opening`)."""
        gap = self.config.timeouts.between_chunks_seconds
        sse = job.stream and not is_document(response.headers.get("content-type"))
        # Raw (undecoded) for a stream: it is relayed as it comes.
        chunks = response.aiter_raw(gap=gap) if sse else response.aiter_bytes(gap=gap)
        try:
            try:
                opening, payload, refusal = await _open(chunks, job, sse=sse)
            except (UpstreamError, TimeoutError) as e:
                # Cut or stalled before the client got anything: like a hang before
                # the headers, the service's fault, so another account, once.
                stalled = isinstance(e, TimeoutError)
                job.attempts.append(
                    Attempt(pick.account.label, "200 stalled" if stalled else "200 cut")
                )
                self.rotation.record_failure(
                    pick,
                    self.clock(),
                    account_fault=False,
                    detail="answer stalled" if stalled else "answer cut",
                )
                message = f"The upstream answer broke off ({_why(e, gap)})."
                st.last = (504 if stalled else 502, error_body(message))
                return self._fail_over_once(pick.account.id, st)
            if refusal is not None:
                return await self._after_error(job, pick, st, token, response, refusal)
            job.attempts.append(Attempt(pick.account.label, "200"))
            job.served_by = pick.account.label
            try:
                if sse:
                    await self._stream(job, opening, chunks, out)
                else:
                    await self._whole(job, response, opening, payload, out)
            finally:
                # Settled at the end: an answer cut or failed is no success.
                if job.upstream_cut:
                    self.rotation.record_failure(
                        pick, self.clock(), account_fault=False, detail="answer cut"
                    )
                else:
                    self.rotation.record_success(pick, self.clock())
            return "done"
        finally:
            await chunks.aclose()
            await response.aclose()

    async def _after_error(
        self,
        job: Job,
        pick: Pick,
        st: _State,
        token: str,
        response: UpstreamAnswer,
        refusal: Refusal,
    ) -> Step:
        """Settle an error answer (a status >= 400, or a 200 judged one)."""
        account, cfg, now = pick.account, self.config, self.clock()
        # Redacted as it comes in: its words reach logs and the saved cooldown
        # detail. (What goes to the client is redacted again on the way out, in
        # _upstream_error: every error body passes there, ours too.)
        status, body = refusal.status, _redacted(refusal.body)
        job.attempts.append(Attempt(account.label, refusal.outcome))
        verdict = classify_error(
            status,
            response.headers,
            body,
            now=now,
            reset_tz=parse_timezone(cfg.quota_reset_timezone),
            default_cooldown=cfg.default_cooldown_seconds,
        )
        self.rotation.record(pick, verdict, now)
        log.warning("account %s: upstream %s", account.label, verdict.detail)
        st.last = (status, body)
        match verdict.kind:
            case "quota" | "rate_limit":
                return "next"  # its cooldown keeps it out of the next picks
            case "auth":
                return await self._after_unauthorized(pick, st, token)
            case "upstream":
                return self._fail_over_once(account.id, st)
            case "account":
                st.skip.add(account.id)
                return "next"
            case _:
                return "stop"  # the request is at fault: another account won't do

    async def _after_unauthorized(self, pick: Pick, st: _State, token: str) -> Step:
        """One refresh and one retry on the same account per request."""
        account = pick.account
        st.skip.add(account.id)
        if account.id in st.auth_retried:
            return "next"
        st.auth_retried.add(account.id)
        try:
            await self.tokens.after_unauthorized(
                account.id, token, wait=self.config.timeouts.refresh_seconds
            )
        except (QwenError, OSError) as e:
            log.warning("account %s: refresh after 401 failed: %s", account.label, e)
            return "next"
        st.skip.discard(account.id)
        st.pinned = account.id
        return "next"

    @staticmethod
    def _fail_over_once(account_id: str, st: _State) -> Step:
        """A 5xx or a connection failure: one other account, not every one."""
        if st.failed_over:
            return "stop"
        st.failed_over = True
        st.skip.add(account_id)
        return "next"

    def _skip(self, job: Job, pick: Pick, st: _State, outcome: str) -> None:
        """Leave the account out of this request; the pick never reached it."""
        self.rotation.release(pick, self.clock())
        job.attempts.append(Attempt(pick.account.label, outcome))
        st.skip.add(pick.account.id)

    async def _token(self, job: Job, pick: Pick, st: _State) -> str | None:
        account = pick.account
        try:
            # The account as this request's pick just read it (see ``known``).
            return await self.tokens.access_token(
                account.id, wait=self.config.timeouts.refresh_seconds, known=account
            )
        except NeedsRelogin:
            self._skip(job, pick, st, "needs re-login")
            return None
        except (QwenError, OSError) as e:
            log.warning("account %s: no token: %s", account.label, e)
            # What the client is told if no other account serves it.
            why = f"account {account.label!r} has no usable token: {e}"
            st.last = (502, error_body(redact.redact(why)))
            # Nothing reached the upstream: the pick is given back.
            self._skip(job, pick, st, "refresh failed")
            if self._oauth_server_failure(e):
                # Down or slow: not the account's fault, but a failure all the
                # same, so sequential rotation moves on and repeated ones cool the
                # account down: requests stop waiting for that server on every
                # pick. The refresh is tried again when the account is picked again.
                self.rotation.record_failure(
                    pick,
                    self.clock(),
                    account_fault=False,
                    detail="token refresh failed",
                )
            return None

    @staticmethod
    def _oauth_server_failure(error: Exception) -> bool:
        """Does a failed token demand count against the account's turn? Only the
        OAuth server being down or slow, once per refresh attempt (not once per
        request that waited for it); a local file problem does not."""
        if isinstance(error, RefreshFailed):
            return error.first_report()
        return isinstance(error, TransientAuthError)

    async def _stream(
        self,
        job: Job,
        opening: bytes,
        chunks: AsyncGenerator[bytes],
        out: AnswerWriter,
    ) -> None:
        headers = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]
        job.status = 200
        await out.start(200, headers, chunked=True)
        translator = self._translator(job)
        gap = self.config.timeouts.between_chunks_seconds
        try:
            await out.write(
                b"".join(translator.feed(opening)) if translator else opening
            )
            async for chunk in chunks:
                data = b"".join(translator.feed(chunk)) if translator else chunk
                await out.write(data)
        except (UpstreamError, TimeoutError) as e:
            why = _why(e, gap)
            log.warning("flow %s: upstream stream broke: %s", job.flow_id, why)
            job.failed, job.error = True, f"upstream stream broke ({why})"
            job.upstream_cut = True
            if translator is None:
                return  # no last chunk: mitmproxy sees a cut stream
        if translator is not None:
            await out.write(b"".join(translator.finish()))
            outcome = translator.outcome
            if outcome.failure is not None:
                job.failed = True
                job.error = job.error or outcome.error_message
                job.upstream_cut = True  # garbage or an error mid-way: no success
        await out.end()

    def _translator(self, job: Job) -> StreamTranslator | None:
        """The job's translator, made at its first use (None for a chat job)."""
        if job.translator is None and job.translated is not None:
            job.translator = StreamTranslator(job.translated, now=self.clock())
        return job.translator

    def _prepare_translator(self, job: Job) -> None:
        """Render the job's opening events while the upstream thinks (see
        :meth:`StreamTranslator.prepare`); a no-op once the stream started."""
        try:
            translator = self._translator(job)
            if translator is not None:
                translator.prepare()
        except Exception:  # a loop callback: the stream renders them itself then
            log.exception("flow %s: cannot prepare the translator", job.flow_id)

    async def _whole(
        self,
        job: Job,
        response: UpstreamAnswer,
        body: bytes,
        payload: object,
        out: AnswerWriter,
    ) -> None:
        if job.translated is None:
            job.status = 200
            ctype = response.headers.get("content-type", "application/json")
            await out.answer(200, body, ctype)
            return
        try:
            assert isinstance(payload, dict)  # judge_whole let only objects through
            result = translate_response(
                payload, job.translated, ids=random_ids, now=self.clock()
            )
        except TranslationError as e:
            await self._fail(job, out, e.status, e.message, e.body_bytes())
            return
        job.status = 200
        await out.answer(200, json.dumps(result, separators=(",", ":")).encode())

    async def _unavailable(
        self,
        job: Job,
        out: AnswerWriter,
        result: AllUnavailable,
        now: float,
        last: tuple[int, bytes] | None,
    ) -> None:
        tz = parse_timezone(self.config.quota_reset_timezone)
        message = result.message(now, tz)
        retry = result.retry_after_seconds(now)
        if retry is None and last is not None and last[0] != 429:
            await self._upstream_error(job, out, *last)
            return
        extra = [("Retry-After", str(retry))] if retry is not None else []
        body = error_body(message, code="rate_limit_exceeded", error_type="rate_limit")
        job.failed, job.error, job.status = True, message, 429
        log.warning("flow %s: %s", job.flow_id, message)
        if not out.started:
            await out.answer(429, body, extra=extra)

    async def _upstream_error(
        self, job: Job, out: AnswerWriter, status: int, body: bytes
    ) -> None:
        body = _redacted(body)  # the client and the flow mitmproxy keeps
        if job.kind == "responses":
            payload = json.dumps(upstream_error_body(status, body)).encode()
        else:
            payload = body
        job.failed, job.status = True, status
        job.error = job.error or f"upstream answered {status}"
        if not out.started:
            await out.answer(status, payload)

    async def _fail(
        self,
        job: Job,
        out: AnswerWriter,
        status: int,
        message: str,
        body: bytes | None = None,
    ) -> None:
        message = redact.redact(message)  # it may quote an upstream's error object
        job.failed, job.error, job.status = True, message, status
        if not out.started:
            await out.answer(status, _redacted(body) if body else error_body(message))


def _redacted(body: bytes) -> bytes:
    """An upstream error body without the secrets it may quote: some gateways
    echo the key they refused ("Incorrect API key provided: sk-...")."""
    return redact.redact(body.decode("utf-8", "replace")).encode()


async def _open(
    chunks: AsyncGenerator[bytes], job: Job, *, sse: bool
) -> tuple[bytes, object, Refusal | None]:
    """Read an answer's opening (a stream's first event, or the whole body) and
    judge it: the bytes read, the parsed body (whole answers) and any refusal."""
    if sse:
        opening, ended = StreamOpening(), True
        async for chunk in chunks:
            if opening.feed(chunk):
                ended = False
                break
        return bytes(opening.data), None, judge_stream(opening.event, ended=ended)
    body = b"".join([chunk async for chunk in chunks])
    payload, refusal = judge_whole(body, stream=job.stream)
    return body, payload, refusal


def _why(error: Exception, gap: float) -> str:
    """Why a body broke off, for logs and the flow comment."""
    if isinstance(error, TimeoutError):
        return f"no data for {gap:g} s"
    return type(error).__name__
