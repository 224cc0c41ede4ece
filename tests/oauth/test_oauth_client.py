"""The HTTP layer and the login driver: canned answers with a fake clock, and the
fake server over real sockets."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from qwen_oauth_mitm import redact
from qwen_oauth_mitm.oauth import protocol as p
from qwen_oauth_mitm.oauth.client import (
    DEFAULT_USER_AGENT,
    OAuthClient,
    PollProgress,
    wait_for_token,
)
from qwen_oauth_mitm.oauth.errors import (
    AccessDenied,
    DeviceCodeExpired,
    NeedsRelogin,
    NotJsonError,
    OAuthServerError,
    TransientAuthError,
)
from qwen_oauth_mitm.oauth.fake_server import FakeQwenOAuth

from .oauth_helpers import FakeClock

BASE = "https://oauth.test"
Reply = httpx.Response | Exception


class Canned:
    """A transport answering token polls from a list; it records every form."""

    def __init__(self, replies: list[Reply]) -> None:
        self.replies = replies
        self.forms: list[dict[str, str]] = []
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.forms.append(dict(parse_qsl(request.content.decode())))
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


def j(status: int, body: dict[str, Any]) -> httpx.Response:
    return httpx.Response(status, json=body)


def pending() -> httpx.Response:
    return j(400, {"error": "authorization_pending"})


def tokens() -> httpx.Response:
    return j(
        200,
        {
            "access_token": "at-1234567890",
            "refresh_token": "rt-1234567890",
            "expires_in": 3600,
            "resource_url": "portal.qwen.ai",
        },
    )


AUTH = p.DeviceAuthorization(
    device_code="dc-1234567890",
    user_code="UC",
    verification_uri="https://x/a",
    verification_uri_complete="https://x/a?c=UC",
    expires_in=300,
    interval=2,
)
PKCE = p.make_pkce()


def client_for(canned: Canned) -> OAuthClient:
    return OAuthClient(BASE, "cid", transport=httpx.MockTransport(canned))


async def run_flow(
    canned: Canned, clock: FakeClock, auth: p.DeviceAuthorization = AUTH
) -> tuple[p.TokenSet, list[PollProgress]]:
    seen: list[PollProgress] = []
    async with client_for(canned) as client:
        result = await wait_for_token(
            client, auth, PKCE, clock=clock, sleep=clock.sleep, on_progress=seen.append
        )
    return result, seen


async def test_pending_then_success_waits_the_interval(clock: FakeClock) -> None:
    canned = Canned([pending(), pending(), tokens()])
    start = clock.now
    result, _ = await run_flow(canned, clock)
    assert result.access_token == "at-1234567890"
    assert clock.now - start == pytest.approx(6.0)  # three polls, 2 s apart
    assert all(s <= 1.0 for s in clock.sleeps)  # cut into ticks for the countdown
    assert [f["grant_type"] for f in canned.forms] == [p.DEVICE_GRANT_TYPE] * 3
    assert {f["code_verifier"] for f in canned.forms} == {PKCE.verifier}
    assert {f["device_code"] for f in canned.forms} == {"dc-1234567890"}


async def test_slow_down_lengthens_the_wait(clock: FakeClock) -> None:
    canned = Canned(
        [j(429, {"error": "slow_down"}), j(429, {"error": "slow_down"}), tokens()]
    )
    start = clock.now
    _, seen = await run_flow(canned, clock)
    assert clock.now - start == pytest.approx(2 + 3 + 4.5)
    assert [s.interval for s in seen if s.event == "slow_down"] == [3.0, 4.5]


async def test_never_approved_expires_at_expires_in(clock: FakeClock) -> None:
    auth = p.DeviceAuthorization(
        "dc-1234567890", "UC", "u", "u", expires_in=10, interval=3
    )
    canned = Canned([pending() for _ in range(20)])
    start = clock.now
    with pytest.raises(DeviceCodeExpired, match="within 5 minutes"):
        await run_flow(canned, clock, auth)
    assert clock.now - start == pytest.approx(10)
    assert len(canned.forms) == 3  # at 3, 6 and 9 s; never after the deadline


async def test_network_errors_while_polling_are_retried(clock: FakeClock) -> None:
    canned = Canned(
        [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), tokens()]
    )
    _, seen = await run_flow(canned, clock)
    assert [s.event for s in seen].count("retrying") == 2


async def test_too_many_network_errors_give_up(clock: FakeClock) -> None:
    canned = Canned([httpx.ConnectError("refused") for _ in range(10)])
    with pytest.raises(TransientAuthError, match="cannot reach"):
        await run_flow(canned, clock)
    assert len(canned.forms) == p.MAX_TRANSIENT_POLL_ERRORS + 1


async def test_denied(clock: FakeClock) -> None:
    with pytest.raises(AccessDenied):
        await run_flow(Canned([pending(), j(400, {"error": "access_denied"})]), clock)


async def test_requests_carry_a_real_user_agent_and_accept_json() -> None:
    canned = Canned([tokens()])
    async with client_for(canned) as client:
        await client.refresh("rt-abcdefghij")
    request = canned.requests[0]
    assert request.headers["user-agent"] == DEFAULT_USER_AGENT
    assert request.headers["user-agent"].startswith("QwenCode/")
    assert request.headers["accept"] == "application/json"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.url == BASE + p.TOKEN_PATH


async def test_tokens_received_are_registered_for_redaction() -> None:
    async with client_for(Canned([tokens()])) as client:
        await client.refresh("rt-old-abcdefghij")
    text = redact.redact("at-1234567890 rt-1234567890 rt-old-abcdefghij")
    assert "1234567890" not in text
    assert "abcdefghij" not in text


async def test_timeout_is_transient_and_names_no_token() -> None:
    canned = Canned([httpx.ReadTimeout("timed out")])
    async with client_for(canned) as client:
        with pytest.raises(TransientAuthError, match="did not answer in time") as info:
            await client.refresh("rt-secret-abcdef")
    assert "rt-secret" not in str(info.value)


# --- against the fake server ----------------------------------------------------------


async def login(fake: FakeQwenOAuth, pkce: p.PkcePair | None = None) -> p.TokenSet:
    async with OAuthClient(fake.url, fake.client_id) as client:
        pair = p.make_pkce()
        auth = await client.request_device_code(pair)
        return await wait_for_token(client, auth, pkce or pair)


async def test_login_against_the_fake(fake: FakeQwenOAuth) -> None:
    fake.pending_polls = 3
    result = await login(fake)
    assert fake.is_valid_access_token(result.access_token)
    assert result.refresh_token in fake.issued
    assert result.resource_url == "portal.qwen.ai"
    assert fake.counts["token_poll"] == 4
    assert fake.requests[0].headers["user-agent"] == DEFAULT_USER_AGENT


async def test_slow_down_against_the_fake(fake: FakeQwenOAuth) -> None:
    fake.slow_down_polls = 2
    await login(fake)
    assert fake.counts["token_poll"] == 2 + fake.pending_polls + 1


@pytest.mark.parametrize(
    ("outcome", "exc"), [("deny", AccessDenied), ("expire", DeviceCodeExpired)]
)
async def test_outcomes_against_the_fake(
    fake: FakeQwenOAuth, outcome: Any, exc: type[Exception]
) -> None:
    fake.outcome = outcome
    with pytest.raises(exc):
        await login(fake)


async def test_real_expiry_against_the_fake(fake: FakeQwenOAuth) -> None:
    fake.device_expires_in = 0.2
    fake.outcome = "wait"
    with pytest.raises(DeviceCodeExpired):
        await login(fake)


async def test_wrong_code_verifier_is_rejected(fake: FakeQwenOAuth) -> None:
    with pytest.raises(OAuthServerError, match="PKCE verification failed") as info:
        await login(fake, pkce=p.make_pkce())
    assert info.value.error == "invalid_grant"


async def test_html_answer_is_a_clear_error(fake: FakeQwenOAuth) -> None:
    fake.html_mode = True
    with pytest.raises(NotJsonError, match="answered with HTML, not JSON"):
        await login(fake)


async def test_refresh_rotates_and_revocation_needs_relogin(
    fake: FakeQwenOAuth,
) -> None:
    first = fake.issue_tokens()
    async with OAuthClient(fake.url, fake.client_id) as client:
        renewed = await client.refresh(first["refresh_token"])
        assert renewed.refresh_token != first["refresh_token"]
        with pytest.raises(NeedsRelogin, match="Invalid refresh token or client_id"):
            await client.refresh(first["refresh_token"])  # rotated away
        assert renewed.refresh_token is not None
        fake.revoke(renewed.refresh_token)
        fake.dead_refresh_error = "invalid_grant"
        with pytest.raises(NeedsRelogin, match="invalid_grant"):
            await client.refresh(renewed.refresh_token)
    assert fake.counts["refresh"] == 3


async def test_unreachable_server_is_transient() -> None:
    fake = FakeQwenOAuth()
    url = fake.url
    fake.stop()  # the port is now closed
    async with OAuthClient(url, "cid") as client:
        with pytest.raises(TransientAuthError, match="cannot reach the OAuth server"):
            await client.refresh("rt-abcdefghijkl")


async def test_fake_server_rejects_a_wrong_client_id(fake: FakeQwenOAuth) -> None:
    async with OAuthClient(fake.url, "someone-else") as client:
        with pytest.raises(OAuthServerError, match="invalid_client"):
            await client.request_device_code(p.make_pkce())
