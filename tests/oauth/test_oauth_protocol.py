"""The pure protocol: PKCE, request builders, answer parsers, the poll machine."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qwen_oauth_mitm.oauth import protocol as p
from qwen_oauth_mitm.oauth.errors import (
    AccessDenied,
    DeviceCodeExpired,
    ForeignResourceUrl,
    NeedsRelogin,
    NotJsonError,
    OAuthServerError,
    TransientAuthError,
)

BASE = "https://oauth.example"
PKCE = p.PkcePair("v" * 43, p.pkce_challenge("v" * 43))


def answer(
    status: int, body: Any, content_type: str = "application/json"
) -> p.HttpAnswer:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return p.HttpAnswer(status, raw, content_type, url=BASE + p.TOKEN_PATH)


def err(status: int, error: str, desc: str = "") -> p.HttpAnswer:
    return answer(status, {"error": error, "error_description": desc})


def device_auth(**over: Any) -> p.DeviceAuthorization:
    fields: dict[str, Any] = {
        "device_code": "dev-code-123456",
        "user_code": "ABCD-1234",
        "verification_uri": "https://x/authorize",
        "verification_uri_complete": "https://x/authorize?user_code=ABCD-1234",
        "expires_in": 300.0,
        "interval": None,
    }
    fields.update(over)
    return p.DeviceAuthorization(**fields)


# --- PKCE and requests ------------------------------------------------------------


def test_pkce_challenge_matches_rfc7636_appendix_b() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert p.pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_make_pkce_is_32_random_bytes_base64url_unpadded() -> None:
    pair = p.make_pkce(bytes(range(32)))
    assert pair.verifier == base64.urlsafe_b64encode(bytes(range(32))).decode().rstrip(
        "="
    )
    assert len(pair.verifier) == 43
    assert "=" not in pair.verifier + pair.challenge
    assert pair.challenge == p.pkce_challenge(pair.verifier)
    assert pair.method == "S256"
    assert p.make_pkce().verifier != p.make_pkce().verifier
    assert pair.verifier not in repr(pair)


def test_device_code_request() -> None:
    req = p.device_code_request(BASE + "/", "cid", PKCE)
    assert (req.method, req.url) == ("POST", BASE + "/api/v1/oauth2/device/code")
    assert dict(req.form) == {
        "client_id": "cid",
        "scope": "openid profile email model.completion",
        "code_challenge": PKCE.challenge,
        "code_challenge_method": "S256",
    }


def test_token_poll_request() -> None:
    req = p.token_poll_request(BASE, "cid", "dev-code-123456", PKCE)
    assert req.url == BASE + "/api/v1/oauth2/token"
    assert dict(req.form) == {
        "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
        "client_id": "cid",
        "device_code": "dev-code-123456",
        "code_verifier": PKCE.verifier,
    }


def test_refresh_request_and_its_repr_hides_the_token() -> None:
    req = p.refresh_request(BASE, "cid", "rt-secret-value")
    assert dict(req.form) == {
        "grant_type": "refresh_token",
        "refresh_token": "rt-secret-value",
        "client_id": "cid",
    }
    assert "rt-secret-value" not in repr(req)
    assert "cid" in repr(req)


# --- device authorization answer ---------------------------------------------------


def test_parse_device_authorization() -> None:
    auth = p.parse_device_authorization(
        answer(
            200,
            {
                "device_code": "dc",
                "user_code": "UC",
                "verification_uri": "https://x/a",
                "verification_uri_complete": "https://x/a?c=UC",
                "expires_in": 300,
                "interval": 5,
            },
        )
    )
    assert auth == p.DeviceAuthorization(
        "dc", "UC", "https://x/a", "https://x/a?c=UC", 300, 5
    )
    assert auth.url_to_open == "https://x/a?c=UC"
    assert "dc" not in repr(auth).replace("https", "")


def test_parse_device_authorization_fills_gaps() -> None:
    auth = p.parse_device_authorization(
        answer(200, {"device_code": "dc", "user_code": "UC", "verification_uri": "u"})
    )
    assert auth.verification_uri_complete == "u"
    assert auth.expires_in == 300
    assert auth.interval is None


@pytest.mark.parametrize(
    ("ans", "exc", "words"),
    [
        (
            err(400, "invalid_client", "bad id"),
            OAuthServerError,
            "invalid_client: bad id",
        ),
        (answer(503, b"busy", "text/plain"), TransientAuthError, "HTTP 503"),
        (answer(200, b"<html>challenge</html>", "text/html"), NotJsonError, "HTML"),
        (answer(200, b"<!DOCTYPE html>", ""), NotJsonError, "HTML, not JSON"),
        (answer(200, b"hello", "text/plain"), NotJsonError, "not JSON"),
        (answer(200, [1, 2]), OAuthServerError, "not an object"),
        (
            answer(200, {"user_code": "U", "verification_uri": "u"}),
            OAuthServerError,
            "device_code",
        ),
        (
            answer(200, {"device_code": "d", "user_code": "U"}),
            OAuthServerError,
            "verification_uri",
        ),
    ],
)
def test_parse_device_authorization_errors(
    ans: p.HttpAnswer, exc: type[Exception], words: str
) -> None:
    with pytest.raises(exc, match=words):
        p.parse_device_authorization(ans)


# --- refresh answer -----------------------------------------------------------------


def test_parse_refresh_answer_with_rotation() -> None:
    tokens = p.parse_refresh_answer(
        answer(
            200,
            {
                "access_token": "at-new",
                "refresh_token": "rt-new",
                "token_type": "Bearer",
                "expires_in": "21600",
                "resource_url": "portal.qwen.ai",
            },
        )
    )
    assert tokens.access_token == "at-new"
    assert tokens.refresh_token == "rt-new"
    assert tokens.expires_at(1000.0) == 22600.0
    assert tokens.resource_url == "portal.qwen.ai"
    assert "at-new" not in repr(tokens)
    assert "rt-new" not in repr(tokens)


def test_parse_refresh_answer_without_new_refresh_token_or_expiry() -> None:
    tokens = p.parse_refresh_answer(answer(200, {"access_token": "at"}))
    assert tokens.refresh_token is None
    assert tokens.token_type == "Bearer"
    assert tokens.expires_at(0.0) == p.DEFAULT_TOKEN_LIFETIME


@pytest.mark.parametrize(
    ("ans", "reason"),
    [
        (err(400, "invalid_grant", "expired"), "invalid_grant: expired"),
        (
            err(400, "invalid_request", "Invalid refresh token or client_id"),
            "invalid_request: Invalid refresh token or client_id",
        ),
        (err(401, "unauthorized"), "unauthorized"),
        (answer(401, b"<html>nope</html>", "text/html"), "HTTP 401"),
        (answer(400, {"error": {"code": "bad", "message": "dead"}}), "bad: dead"),
    ],
)
def test_refresh_400_or_401_needs_relogin(ans: p.HttpAnswer, reason: str) -> None:
    with pytest.raises(NeedsRelogin) as info:
        p.parse_refresh_answer(ans)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("ans", "exc"),
    [
        (answer(500, b"oops", "text/plain"), TransientAuthError),
        (answer(502, b"<html>bad gateway</html>", "text/html"), TransientAuthError),
        (answer(429, {"error": "rate"}), TransientAuthError),
        (answer(200, b"<html>waf</html>", "text/html"), NotJsonError),
        (answer(200, {"error": "weird"}), OAuthServerError),
        (answer(403, {"error": "forbidden"}), OAuthServerError),
        (answer(200, {"token_type": "Bearer"}), OAuthServerError),
    ],
)
def test_refresh_other_failures_are_not_relogin(
    ans: p.HttpAnswer, exc: type[Exception]
) -> None:
    with pytest.raises(exc) as info:
        p.parse_refresh_answer(ans)
    assert not isinstance(info.value, NeedsRelogin)


def test_error_messages_never_hold_tokens() -> None:
    body = {"error": "weird", "access_token": "at-leak-me", "refresh_token": "rt-leak"}
    with pytest.raises(OAuthServerError) as info:
        p.parse_refresh_answer(answer(200, body))
    assert "leak" not in str(info.value)


# --- identity and API base ---------------------------------------------------------


def _jwt(claims: dict[str, Any]) -> str:
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJub25lIn0.{payload}.sig"


@pytest.mark.parametrize(
    ("data", "identity"),
    [
        ({"access_token": "opaque"}, None),
        (
            {"access_token": "x", "id_token": _jwt({"email": "a@b.c", "sub": "1"})},
            "a@b.c",
        ),
        ({"access_token": _jwt({"sub": "user-7"})}, "user-7"),
        ({"access_token": "a.b.c"}, None),
        ({"access_token": "x", "id_token": _jwt({"email": ""})}, None),
    ],
)
def test_identity_from(data: dict[str, Any], identity: str | None) -> None:
    assert p.identity_from(data) == identity


# --- resource_url: where a token may be used -----------------------------------------

FOREIGN_RESOURCE_URLS = [
    "evil.example",
    "portal.qwen.ai.evil.example",
    "user@portal.qwen.ai",
    "portal.qwen.ai@evil.example",
    "https://portal.qwen.ai@evil.example/v1",
    "https://portal.qwen.ai:443@evil.example",
    "127.0.0.1",
    "127.0.0.1:8080",
    "http://127.0.0.1:8080/v1",
    "[::1]",
    "https://[::1]:8443/v1",
    "0x7f000001",
    "http://portal.qwen.ai",
    "ftp://portal.qwen.ai",
    "//portal.qwen.ai",
    "portal.qwen.ai\\@evil.example",
    "portal.qwen.ai%2eevil.example",
    "portal%2Eqwen%2Eai",
    "portal.qwen.ai.",
    "portal.qwen.ai:8443",
    "portal.qwen.ai?@evil.example",
    "portal.qwen.ai#@evil.example",
    "portal.qwen.ai evil.example",
    "dashscope.aliyuncs.com.evil.example",
    "evil-dashscope.aliyuncs.com",
    "portal.qwen.ai\n.evil.example",
]


@pytest.mark.parametrize(
    "resource",
    ["portal.qwen.ai", "PORTAL.qwen.ai", "https://portal.qwen.ai/", " portal.qwen.ai ",
     "https://portal.qwen.ai/v1", "dashscope.aliyuncs.com",
     "dashscope-intl.aliyuncs.com"],
)  # fmt: skip
def test_a_qwen_resource_url_is_accepted(resource: str) -> None:
    body = {"access_token": "at-secret-1", "resource_url": resource}
    assert p.parse_refresh_answer(answer(200, body)).resource_url == resource


@pytest.mark.parametrize("resource", FOREIGN_RESOURCE_URLS)
def test_a_refresh_answer_for_a_foreign_host_is_refused(resource: str) -> None:
    body = {
        "access_token": "at-secret-12345",
        "refresh_token": "rt-secret-12345",
        "resource_url": resource,
    }
    with pytest.raises(ForeignResourceUrl) as caught:
        p.parse_refresh_answer(answer(200, body))
    message = str(caught.value)
    assert repr(resource.strip()[:80]) in message  # names what it refused
    assert "secret" not in message
    # Not a dead refresh token: the manager retries later, never marks it dead.
    assert not isinstance(caught.value, NeedsRelogin)


@pytest.mark.parametrize("resource", FOREIGN_RESOURCE_URLS[:6])
def test_a_login_answer_for_a_foreign_host_is_refused(resource: str) -> None:
    poll = p.DevicePoll(device_auth(), started_at=0)
    body = {"access_token": "at-secret-1", "resource_url": resource}
    with pytest.raises(ForeignResourceUrl, match="not a Qwen or DashScope host"):
        poll.receive(answer(200, body), 1)


@pytest.mark.parametrize("resource", [None, "", 42, {"host": "evil.example"}])
def test_a_missing_or_non_text_resource_url_is_ignored(resource: object) -> None:
    tokens = p.parse_refresh_answer(
        answer(200, {"access_token": "at", "resource_url": resource})
    )
    assert tokens.resource_url is None


# --- the poll state machine ----------------------------------------------------------


def test_poll_pending_then_success() -> None:
    poll = p.DevicePoll(device_auth(interval=5), started_at=0)
    assert poll.next_delay(0) == 5
    assert poll.receive(err(400, "authorization_pending"), 5) == p.Pending(5)
    result = poll.receive(
        answer(200, {"access_token": "at", "refresh_token": "rt"}), 10
    )
    assert isinstance(result, p.TokenSet)
    assert poll.polls == 2


def test_poll_uses_default_interval_when_server_gives_none() -> None:
    poll = p.DevicePoll(device_auth(), started_at=0)
    assert poll.interval == p.DEFAULT_POLL_INTERVAL == 2.0


def test_slow_down_multiplies_by_one_and_a_half_capped_at_ten() -> None:
    poll = p.DevicePoll(device_auth(), started_at=0)
    seen = []
    for _ in range(6):
        pending = poll.receive(err(429, "slow_down"), 1)
        assert isinstance(pending, p.Pending)
        assert pending.slowed_down
        seen.append(poll.interval)
    assert seen == [3.0, 4.5, 6.75, 10.0, 10.0, 10.0]
    assert poll.slow_downs == 6


def test_slow_down_keeps_a_server_interval_above_the_cap() -> None:
    poll = p.DevicePoll(device_auth(interval=15), started_at=0)
    poll.receive(err(429, "slow_down"), 1)
    assert poll.interval == 15


@given(
    st.floats(min_value=0.01, max_value=60),
    st.integers(min_value=1, max_value=30),
)
def test_slow_down_never_shrinks_nor_passes_the_cap(interval: float, n: int) -> None:
    poll = p.DevicePoll(device_auth(interval=interval), started_at=0)
    last = poll.interval
    for _ in range(n):
        poll.receive(err(429, "slow_down"), 0)
        assert last <= poll.interval <= max(interval, p.MAX_POLL_INTERVAL)
        last = poll.interval


def test_expired_token_answer_uses_the_reference_wording() -> None:
    poll = p.DevicePoll(device_auth(), started_at=0)
    with pytest.raises(DeviceCodeExpired, match="within 5 minutes"):
        poll.receive(err(400, "expired_token"), 10)


def test_deadline_ends_polling() -> None:
    poll = p.DevicePoll(device_auth(expires_in=5, interval=2), started_at=100)
    assert poll.next_delay(100) == 2
    assert poll.next_delay(104) == 1  # never waits past the deadline
    assert poll.remaining(104) == 1
    with pytest.raises(DeviceCodeExpired):
        poll.next_delay(105)
    assert poll.remaining(200) == 0


def test_access_denied() -> None:
    poll = p.DevicePoll(device_auth(), started_at=0)
    with pytest.raises(AccessDenied, match="denied"):
        poll.receive(err(400, "access_denied"), 1)


def test_unknown_poll_error_is_a_server_error_with_its_code() -> None:
    poll = p.DevicePoll(device_auth(), started_at=0)
    with pytest.raises(OAuthServerError, match="PKCE verification failed") as info:
        poll.receive(err(400, "invalid_grant", "PKCE verification failed"), 1)
    assert info.value.error == "invalid_grant"


def test_poll_html_answer_is_a_clear_error() -> None:
    poll = p.DevicePoll(device_auth(), started_at=0)
    with pytest.raises(NotJsonError, match="HTML, not JSON"):
        poll.receive(answer(200, b"<html></html>", "text/html"), 1)


def test_poll_5xx_is_retried_up_to_a_limit() -> None:
    poll = p.DevicePoll(device_auth(), started_at=0, max_transient_errors=2)
    boom = answer(503, b"busy", "text/plain")
    assert isinstance(poll.receive(boom, 1), p.Pending)
    assert isinstance(poll.receive(boom, 2), p.Pending)
    with pytest.raises(TransientAuthError):
        poll.receive(boom, 3)


def test_a_good_answer_resets_the_transient_count() -> None:
    poll = p.DevicePoll(device_auth(), started_at=0, max_transient_errors=1)
    boom = answer(503, b"busy", "text/plain")
    poll.receive(boom, 1)
    poll.receive(err(400, "authorization_pending"), 2)
    assert isinstance(poll.receive(boom, 3), p.Pending)
