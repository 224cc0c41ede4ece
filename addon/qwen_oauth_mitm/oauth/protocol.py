"""The Qwen OAuth protocol, pure: no I/O, no clock, no sleeping.

Device authorization grant (RFC 8628) with PKCE (RFC 7636, S256), and the refresh
grant (RFC 6749 §6), as Qwen's server speaks them (``docs: design/qwen-oauth.md``):

1. :func:`device_code_request` builds the request; :func:`parse_device_authorization`
   reads the answer.
2. :class:`DevicePoll` is the polling state machine. The shell asks it how long to
   wait (:meth:`DevicePoll.next_delay`), sends :func:`token_poll_request`, and feeds
   the answer to :meth:`DevicePoll.receive`, which returns :class:`Pending` or the
   :class:`TokenSet`, or raises (expired, denied, unusable answer).
3. :func:`refresh_request` and :func:`parse_refresh_answer` renew a token.

A token answer says where its token is to be used (``resource_url``). One that
names a host other than ``portal.qwen.ai`` or a ``dashscope*.aliyuncs.com`` host is
refused whole (:class:`ForeignResourceUrl`): its tokens are never stored or used,
so they cannot be sent there (``proxy/scope.py`` checks again before each send).

Requests are plain data (:class:`FormRequest`); answers come in as
:class:`HttpAnswer`. Time is passed in as numbers.

``slow_down``: we multiply the interval by 1.5, capped at 10 s, as the official
Qwen Code CLI does (RFC 8628 §3.5 says add 5 s; against Qwen's server the CLI's rule
is the one known to work, and a 2 s interval would jump to 7 s under the RFC's).
An interval the server sets above the cap is kept.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from qwen_oauth_mitm.oauth.errors import (
    AccessDenied,
    DeviceCodeExpired,
    ForeignResourceUrl,
    NeedsRelogin,
    NotJsonError,
    OAuthServerError,
    TransientAuthError,
)

DEVICE_CODE_PATH = "/api/v1/oauth2/device/code"
TOKEN_PATH = "/api/v1/oauth2/token"
SCOPE = "openid profile email model.completion"
DEVICE_GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"
REFRESH_GRANT_TYPE = "refresh_token"

DEFAULT_POLL_INTERVAL = 2.0
"""Seconds between polls when the server gives no ``interval`` (Qwen Code's value)."""
MAX_POLL_INTERVAL = 10.0
SLOW_DOWN_FACTOR = 1.5
DEFAULT_TOKEN_LIFETIME = 3600.0
"""Assumed when a token answer has no ``expires_in``: refresh early, not never."""
MAX_TRANSIENT_POLL_ERRORS = 5
"""Consecutive network/5xx errors while polling before the login gives up."""

_SECRET_FORM_KEYS = frozenset({"refresh_token", "code_verifier", "device_code"})

PORTAL_HOST = "portal.qwen.ai"
_DASHSCOPE_HOST = re.compile(r"^dashscope(-[a-z0-9]+)?\.aliyuncs\.com$")
# Letters, digits and inner hyphens in dot-separated labels, nothing else: no user
# info, port, brackets, backslash, percent escape, ``?``/``#`` or trailing dot, so
# no URL parser can read another host out of it than the one we compare.
_HOST_NAME = re.compile(
    r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$"
)


# --- data -------------------------------------------------------------------------


@dataclass(frozen=True)
class PkcePair:
    """A PKCE code verifier and its S256 challenge."""

    verifier: str = field(repr=False)
    challenge: str
    method: str = "S256"


def pkce_challenge(verifier: str) -> str:
    """base64url(sha256(verifier)) without padding (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def make_pkce(random_bytes: bytes | None = None) -> PkcePair:
    """A fresh pair: the verifier is 32 random bytes, base64url without padding."""
    raw = secrets.token_bytes(32) if random_bytes is None else random_bytes
    verifier = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    return PkcePair(verifier, pkce_challenge(verifier))


@dataclass(frozen=True)
class FormRequest:
    """An HTTP request to send: ``application/x-www-form-urlencoded`` body."""

    method: str
    url: str
    form: Mapping[str, str]

    def __repr__(self) -> str:
        shown = {
            k: ("***" if k in _SECRET_FORM_KEYS else v) for k, v in self.form.items()
        }
        return f"FormRequest({self.method} {self.url} {shown})"


@dataclass(frozen=True)
class HttpAnswer:
    """What the server answered, as the HTTP layer received it."""

    status: int
    body: bytes
    content_type: str = ""
    url: str = ""


@dataclass(frozen=True)
class DeviceAuthorization:
    """The answer to the device code request (RFC 8628 §3.2)."""

    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    verification_uri_complete: str
    expires_in: float
    interval: float | None = None

    @property
    def url_to_open(self) -> str:
        """The URL the user should visit (the one with the code already in it)."""
        return self.verification_uri_complete or self.verification_uri


@dataclass(frozen=True)
class TokenSet:
    """Tokens from a successful poll or refresh."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    token_type: str = "Bearer"
    expires_in: float | None = None
    resource_url: str | None = None
    identity: str | None = None
    """Who logged in, when the answer says (an ``id_token`` or JWT access token)."""

    def expires_at(self, now: float) -> float:
        """Absolute expiry, given the wall-clock time the answer arrived."""
        lifetime = (
            DEFAULT_TOKEN_LIFETIME if self.expires_in is None else self.expires_in
        )
        return now + lifetime


@dataclass(frozen=True)
class Pending:
    """Not approved yet; poll again after ``interval`` seconds."""

    interval: float
    slowed_down: bool = False


# --- requests ---------------------------------------------------------------------


def _url(base_url: str, path: str) -> str:
    return base_url.rstrip("/") + path


def device_code_request(
    base_url: str, client_id: str, pkce: PkcePair, *, scope: str = SCOPE
) -> FormRequest:
    """Step 1: ask for a device code and a user code."""
    return FormRequest(
        "POST",
        _url(base_url, DEVICE_CODE_PATH),
        {
            "client_id": client_id,
            "scope": scope,
            "code_challenge": pkce.challenge,
            "code_challenge_method": pkce.method,
        },
    )


def token_poll_request(
    base_url: str, client_id: str, device_code: str, pkce: PkcePair
) -> FormRequest:
    """Step 3: ask whether the user has approved yet."""
    return FormRequest(
        "POST",
        _url(base_url, TOKEN_PATH),
        {
            "grant_type": DEVICE_GRANT_TYPE,
            "client_id": client_id,
            "device_code": device_code,
            "code_verifier": pkce.verifier,
        },
    )


def refresh_request(base_url: str, client_id: str, refresh_token: str) -> FormRequest:
    """Trade a refresh token for a new access token (and maybe a new refresh token)."""
    return FormRequest(
        "POST",
        _url(base_url, TOKEN_PATH),
        {
            "grant_type": REFRESH_GRANT_TYPE,
            "refresh_token": refresh_token,
            "client_id": client_id,
        },
    )


# --- answers ----------------------------------------------------------------------


def _where(answer: HttpAnswer) -> str:
    return (
        f"HTTP {answer.status} from {answer.url}"
        if answer.url
        else f"HTTP {answer.status}"
    )


def parse_json(answer: HttpAnswer) -> dict[str, Any]:
    """The JSON object in ``answer``; a clear error for HTML and other text."""
    text = answer.body.decode("utf-8", "replace").strip()
    looks_html = "html" in answer.content_type.lower() or text[:1] == "<"
    if looks_html:
        raise NotJsonError(
            f"the OAuth server answered with HTML, not JSON ({_where(answer)}); "
            "a web firewall or a login page may be in the way. Check oauth_base_url, "
            "or try again later",
            status=answer.status,
        )
    try:
        data = json.loads(text)
    except ValueError:
        shown = answer.content_type or "no content type"
        raise NotJsonError(
            f"the OAuth server answered with something that is not JSON "
            f"({_where(answer)}, {shown}, {len(answer.body)} bytes)",
            status=answer.status,
        ) from None
    if not isinstance(data, dict):
        raise OAuthServerError(
            f"the OAuth server answered JSON that is not an object ({_where(answer)})",
            status=answer.status,
        )
    return data


def _error_fields(data: Mapping[str, Any]) -> tuple[str | None, str | None]:
    err = data.get("error")
    desc = data.get("error_description")
    if isinstance(err, dict):  # {"error": {"code": ..., "message": ...}}
        desc = err.get("message", desc)
        err = err.get("code") or err.get("type")
    return (
        str(err) if err is not None else None,
        _short(str(desc)) if desc is not None else None,
    )


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe(error: str | None, description: str | None) -> str:
    if error and description:
        return f"{error}: {description}"
    return error or description or "no error code"


def _raise_transient_or_unexpected(answer: HttpAnswer, what: str) -> None:
    """For answers that are neither success nor a known protocol error."""
    if answer.status >= 500 or answer.status == 429:
        raise TransientAuthError(
            f"the OAuth server could not {what} right now ({_where(answer)}); "
            "try again later"
        )


def _successful_json(answer: HttpAnswer, what: str, refused: str) -> dict[str, Any]:
    """The JSON object of a 200 answer without an ``error``; else raise.

    429/5xx are transient; any other status, or an ``error`` field, is the server
    refusing (``refused`` starts the message).
    """
    if answer.status != 200:
        _raise_transient_or_unexpected(answer, what)
    data = parse_json(answer)
    if answer.status != 200 or "error" in data:
        error, description = _error_fields(data)
        raise OAuthServerError(
            f"{refused} ({_where(answer)}): {_describe(error, description)}",
            status=answer.status,
            error=error,
            description=description,
        )
    return data


def _number(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number >= 0 else None


def _required_str(data: Mapping[str, Any], key: str, answer: HttpAnswer) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise OAuthServerError(
            f"the OAuth server's answer lacks {key!r} ({_where(answer)})",
            status=answer.status,
        )
    return value


def parse_device_authorization(answer: HttpAnswer) -> DeviceAuthorization:
    """Read the device code answer, or raise with the server's reason."""
    data = _successful_json(
        answer, "start a login", "the OAuth server refused to start a login"
    )
    verification_uri = data.get("verification_uri")
    complete = data.get("verification_uri_complete")
    if not isinstance(complete, str) or not complete:
        complete = verification_uri if isinstance(verification_uri, str) else None
    if not complete:
        raise OAuthServerError(
            f"the OAuth server's answer lacks 'verification_uri' ({_where(answer)})"
        )
    expires_in = _number(data, "expires_in")
    return DeviceAuthorization(
        device_code=_required_str(data, "device_code", answer),
        user_code=_required_str(data, "user_code", answer),
        verification_uri=verification_uri
        if isinstance(verification_uri, str)
        else complete,
        verification_uri_complete=complete,
        expires_in=300.0 if expires_in is None else expires_in,
        interval=_number(data, "interval") or None,
    )


def is_qwen_api_host(host: str) -> bool:
    """Is ``host`` (lowercase) one Qwen serves its API from?"""
    return host == PORTAL_HOST or _DASHSCOPE_HOST.match(host) is not None


def resource_host(resource_url: str) -> str | None:
    """The host a ``resource_url`` names (``portal.qwen.ai``, ``https://portal.qwen.ai``
    or with a path), lowercase; None when it is not a plain host name (another
    scheme, user info, a port, an IP literal in brackets, a trailing dot...)."""
    raw = resource_url.strip().lower()
    host = raw.removeprefix("https://").split("/", 1)[0]
    return host if _HOST_NAME.match(host) else None


def check_resource_url(resource_url: str, answer: HttpAnswer | None = None) -> None:
    """Raise :class:`ForeignResourceUrl` unless ``resource_url`` names a Qwen host."""
    host = resource_host(resource_url)
    if host is not None and is_qwen_api_host(host):
        return
    shown = _short(resource_url.strip(), 80)
    where = f" ({_where(answer)})" if answer is not None else ""
    raise ForeignResourceUrl(
        f"refused tokens for {shown!r}: the resource_url{where} is not a Qwen "
        f"or DashScope host ({PORTAL_HOST}, dashscope*.aliyuncs.com), and a token "
        "is never sent anywhere else",
        status=answer.status if answer is not None else None,
    )


def parse_token_set(data: Mapping[str, Any], answer: HttpAnswer) -> TokenSet:
    """The tokens in a successful poll or refresh answer; refused whole when its
    ``resource_url`` names a host that is not Qwen's."""
    access = _required_str(data, "access_token", answer)
    refresh = data.get("refresh_token")
    token_type = data.get("token_type")
    resource = data.get("resource_url")
    if isinstance(resource, str) and resource:
        check_resource_url(resource, answer)
    return TokenSet(
        access_token=access,
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        token_type=token_type if isinstance(token_type, str) else "Bearer",
        expires_in=_number(data, "expires_in"),
        resource_url=resource if isinstance(resource, str) and resource else None,
        identity=identity_from(data),
    )


def parse_refresh_answer(answer: HttpAnswer) -> TokenSet:
    """Read a refresh answer.

    400/401 mean the refresh token is dead (``invalid_grant``, or the
    ``invalid_request`` "Invalid refresh token or client_id" seen in practice):
    :class:`NeedsRelogin`. 429/5xx are :class:`TransientAuthError`.
    """
    if answer.status in (400, 401):
        try:
            error, description = _error_fields(parse_json(answer))
        except OAuthServerError:
            error, description = None, None
        reason = _describe(error, description) if error or description else None
        raise NeedsRelogin(
            f"the refresh token was refused ({_where(answer)}"
            + (f": {reason})" if reason else ")"),
            reason=reason or f"HTTP {answer.status}",
        )
    data = _successful_json(answer, "refresh the token", "the token refresh failed")
    return parse_token_set(data, answer)


def identity_from(data: Mapping[str, Any]) -> str | None:
    """The e-mail or subject in an ``id_token`` or a JWT access token, if any.

    Claims are read without verifying the signature: the value only decides
    whether a new login is an account we already have, never what it may do.
    """
    for key in ("id_token", "access_token"):
        token = data.get(key)
        claims = _jwt_claims(token) if isinstance(token, str) else None
        if claims:
            for claim in ("email", "sub"):
                value = claims.get(claim)
                if isinstance(value, str) and value:
                    return value
    return None


def _jwt_claims(token: str) -> dict[str, Any] | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        data = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, binascii.Error):
        return None
    return data if isinstance(data, dict) else None


# --- polling ----------------------------------------------------------------------


class DevicePoll:
    """The state of one device login while the user approves it.

    ``now`` values are monotonic seconds; ``started_at`` is when the device code
    answer arrived.
    """

    def __init__(
        self,
        authorization: DeviceAuthorization,
        *,
        started_at: float,
        default_interval: float = DEFAULT_POLL_INTERVAL,
        max_interval: float = MAX_POLL_INTERVAL,
        max_transient_errors: int = MAX_TRANSIENT_POLL_ERRORS,
    ) -> None:
        self.authorization = authorization
        self.interval = authorization.interval or default_interval
        self.deadline = started_at + authorization.expires_in
        self.max_interval = max_interval
        self.max_transient_errors = max_transient_errors
        self.polls = 0
        self.slow_downs = 0
        self._transient_in_a_row = 0

    def remaining(self, now: float) -> float:
        """Seconds left before the device code expires (never negative)."""
        return max(0.0, self.deadline - now)

    def next_delay(self, now: float) -> float:
        """How long to wait before the next poll; raises once the code expired."""
        left = self.remaining(now)
        if left <= 0:
            raise DeviceCodeExpired()
        return min(self.interval, left)

    def transient(self, error: TransientAuthError) -> None:
        """A poll failed on the network or with a 5xx: keep going, up to a limit."""
        self._transient_in_a_row += 1
        if self._transient_in_a_row > self.max_transient_errors:
            raise error

    def receive(self, answer: HttpAnswer, now: float) -> TokenSet | Pending:
        """Digest one poll answer (RFC 8628 §3.5)."""
        self.polls += 1
        if answer.status >= 500:
            self.transient(
                TransientAuthError(
                    f"the OAuth server keeps failing ({_where(answer)}); "
                    "try again later"
                )
            )
            return Pending(self.interval)
        self._transient_in_a_row = 0
        data = parse_json(answer)
        error, description = _error_fields(data)
        if answer.status == 200 and error is None:
            return parse_token_set(data, answer)
        if error == "authorization_pending":
            return Pending(self.interval)
        if error == "slow_down":
            self.slow_downs += 1
            slower = min(self.interval * SLOW_DOWN_FACTOR, self.max_interval)
            self.interval = max(self.interval, slower)
            return Pending(self.interval, slowed_down=True)
        if error == "expired_token" or self.remaining(now) <= 0:
            raise DeviceCodeExpired()
        if error == "access_denied":
            raise AccessDenied(
                "the login was denied in the browser; run `qwen-oauth login` again "
                "and approve it"
            )
        raise OAuthServerError(
            f"the OAuth server refused the login ({_where(answer)}): "
            f"{_describe(error, description)}",
            status=answer.status,
            error=error,
            description=description,
        )
