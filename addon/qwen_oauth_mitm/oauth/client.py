"""The one HTTP layer between us and the Qwen OAuth server, and the login driver.

:class:`OAuthClient` sends :class:`~.protocol.FormRequest` values with httpx (a real
User-Agent, ``Accept: application/json``, a timeout) and hands the answers to the
pure parsers in :mod:`.protocol`. Network failures and timeouts become
:class:`~.errors.TransientAuthError`; no error message ever holds a token (the
request form is never shown, and every token received is registered with
:mod:`qwen_oauth_mitm.redact` before anything else happens to it).

:func:`wait_for_token` drives :class:`~.protocol.DevicePoll` with an injectable
clock and sleep, so tests run the whole polling loop without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import httpx

from qwen_oauth_mitm import __version__, redact
from qwen_oauth_mitm.config import UpstreamHeadersConfig
from qwen_oauth_mitm.oauth import protocol
from qwen_oauth_mitm.oauth.errors import DeviceCodeExpired, TransientAuthError
from qwen_oauth_mitm.oauth.protocol import (
    DeviceAuthorization,
    DevicePoll,
    FormRequest,
    HttpAnswer,
    PkcePair,
    TokenSet,
)

log = logging.getLogger(__name__)

DEFAULT_USER_AGENT = UpstreamHeadersConfig().user_agent
"""The official Qwen Code CLI's look: a bare ``python-httpx`` agent meets the WAF."""
DEFAULT_TIMEOUT = 20.0

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class OAuthClient:
    """Talks to ``{base_url}/api/v1/oauth2/...``; use as ``async with``."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        user_agent: str = DEFAULT_USER_AGENT,
        transport: httpx.AsyncBaseTransport | None = None,
        trust_env: bool = True,
    ) -> None:
        """``trust_env`` honours HTTP(S)_PROXY / NO_PROXY; inside the proxy itself,
        pass False when those variables point at the proxy."""
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            headers={
                "User-Agent": user_agent or f"qwen-oauth-mitm/{__version__}",
                "Accept": "application/json",
            },
            transport=transport,
            follow_redirects=False,
            trust_env=trust_env,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, request: FormRequest) -> HttpAnswer:
        """Send one request; network errors and timeouts are transient errors."""
        try:
            response = await self._http.request(
                request.method, request.url, data=dict(request.form)
            )
        except httpx.TimeoutException:
            raise TransientAuthError(
                f"the OAuth server at {self.base_url} did not answer in time"
            ) from None
        except httpx.HTTPError as e:
            # httpx messages name the host and the OS error, never the form.
            raise TransientAuthError(
                f"cannot reach the OAuth server at {self.base_url}: "
                f"{type(e).__name__}: {redact.redact(str(e)) or 'connection failed'}"
            ) from None
        answer = HttpAnswer(
            status=response.status_code,
            body=response.content,
            content_type=response.headers.get("content-type", ""),
            url=request.url,
        )
        log.debug("%s %s -> HTTP %d", request.method, request.url, answer.status)
        return answer

    async def request_device_code(self, pkce: PkcePair) -> DeviceAuthorization:
        """Start a device login."""
        req = protocol.device_code_request(self.base_url, self.client_id, pkce)
        auth = protocol.parse_device_authorization(await self.send(req))
        redact.register(auth.device_code)
        return auth

    async def poll_once(
        self, authorization: DeviceAuthorization, pkce: PkcePair
    ) -> HttpAnswer:
        """One token poll; the answer goes to :meth:`DevicePoll.receive`."""
        req = protocol.token_poll_request(
            self.base_url, self.client_id, authorization.device_code, pkce
        )
        answer = await self.send(req)
        _register_tokens_in(answer)
        return answer

    async def refresh(self, refresh_token: str) -> TokenSet:
        """Renew an access token; see :func:`protocol.parse_refresh_answer`."""
        redact.register(refresh_token)
        req = protocol.refresh_request(self.base_url, self.client_id, refresh_token)
        answer = await self.send(req)
        _register_tokens_in(answer)
        return protocol.parse_refresh_answer(answer)


def _register_tokens_in(answer: HttpAnswer) -> None:
    """Register any token in a successful answer before it can reach a log."""
    if answer.status != 200:
        return
    try:
        data = protocol.parse_json(answer)
    except Exception:
        return
    redact.register(
        *(
            v
            for k in ("access_token", "refresh_token", "id_token")
            if isinstance(v := data.get(k), str)
        )
    )


@dataclass(frozen=True)
class PollProgress:
    """Reported while waiting: seconds left, the poll interval, and what changed."""

    remaining: float
    interval: float
    event: str = "waiting"
    """``waiting``, ``slow_down`` (interval raised) or ``retrying`` (network error)."""
    detail: str = ""


async def wait_for_token(
    client: OAuthClient,
    authorization: DeviceAuthorization,
    pkce: PkcePair,
    *,
    started_at: float | None = None,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
    on_progress: Callable[[PollProgress], None] | None = None,
    tick: float = 1.0,
) -> TokenSet:
    """Poll until the user approves; raises on expiry, denial or a bad answer.

    Waits are cut into ``tick``-second slices so ``on_progress`` can drive a live
    countdown.
    """
    poll = DevicePoll(
        authorization, started_at=clock() if started_at is None else started_at
    )

    def report(event: str = "waiting", detail: str = "") -> None:
        if on_progress is not None:
            on_progress(
                PollProgress(poll.remaining(clock()), poll.interval, event, detail)
            )

    while True:
        wake = clock() + poll.next_delay(clock())
        while (left := wake - clock()) > 0:
            report()
            await sleep(min(tick, left))
        if poll.remaining(clock()) <= 0:
            raise DeviceCodeExpired()
        try:
            answer = await client.poll_once(authorization, pkce)
        except TransientAuthError as e:
            poll.transient(e)
            report("retrying", str(e))
            continue
        result = poll.receive(answer, clock())
        if isinstance(result, TokenSet):
            return result
        if result.slowed_down:
            report("slow_down", f"polling every {result.interval:g} s")
