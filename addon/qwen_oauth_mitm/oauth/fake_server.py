"""A fake Qwen OAuth server on 127.0.0.1, for tests and demos.

It speaks the two endpoints we use (device code and token) the way Qwen's server
does, and can misbehave on demand. It runs in a background thread on a free port::

    with FakeQwenOAuth(pending_polls=2) as fake:
        ...  # QWEN_OAUTH_BASE_URL=fake.url
        assert fake.counts["refresh"] == 1

Knobs are plain attributes, read at each request, so a test may change them while
the server runs:

- ``interval``: the ``interval`` of the device code answer (``None``: omitted);
- ``device_expires_in``: lifetime of a device code, seconds;
- ``pending_polls``: polls answered ``authorization_pending`` before the outcome;
- ``slow_down_polls``: the first polls answered ``slow_down`` (HTTP 429);
- ``outcome``: ``approve``, ``deny`` (``access_denied``), ``expire``
  (``expired_token``) or ``wait`` (pending until :meth:`approve`/:meth:`deny`);
- ``identity``: who "approves" the next login, sent in an ``id_token`` so logins
  of the same person can be told apart (``None``: no ``id_token``, like Qwen);
- ``html_mode``: every answer is a 200 HTML challenge page (a WAF in the way);
- ``token_lifetime``, ``rotate_refresh_tokens``, ``resource_url``;
- ``refresh_delay``: seconds a refresh takes (to make refreshes overlap);
- ``refresh_failure``: ``None``, ``"server_error"`` (HTTP 500), ``"unavailable"``
  (HTTP 503, an HTML page, as a load balancer with no server behind it),
  ``"drop"`` (the connection is closed with no answer, as a server going down) or
  ``"invalid_grant"``;
- ``dead_refresh_error``: the answer to a revoked or unknown refresh token,
  ``"invalid_request"`` (Qwen's real "Invalid refresh token or client_id") or
  ``"invalid_grant"``.

Readable state: ``counts`` (``device_code``, ``token_poll``, ``refresh``,
``requests``), ``requests`` (every request: path, form, headers), ``issued`` (every
token handed out), and :meth:`is_valid_access_token`.

``python -m qwen_oauth_mitm.oauth.fake_server`` runs one and prints its URL.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import secrets
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal
from urllib.parse import parse_qsl

from qwen_oauth_mitm.config import DEFAULT_CLIENT_ID
from qwen_oauth_mitm.localserver import LocalServer
from qwen_oauth_mitm.oauth.protocol import (
    DEVICE_CODE_PATH,
    DEVICE_GRANT_TYPE,
    REFRESH_GRANT_TYPE,
    TOKEN_PATH,
    pkce_challenge,
)

Outcome = Literal["approve", "deny", "expire", "wait"]
RefreshFailure = Literal["server_error", "unavailable", "drop", "invalid_grant"]

UNAVAILABLE_PAGE = (
    b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>"
)


class DropConnection(Exception):
    """Raised by :meth:`FakeQwenOAuth.handle`: close the connection, answer nothing."""


HTML_PAGE = (
    b"<!DOCTYPE html><html><head><title>Verifying you are human</title></head>"
    b"<body><p>Please enable JavaScript to continue.</p></body></html>"
)


@dataclass
class _Grant:
    device_code: str
    user_code: str
    challenge: str
    created: float
    expires_in: float
    identity: str | None
    polls: int = 0
    decision: Outcome | None = None
    used: bool = False


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    form: Mapping[str, str]
    headers: Mapping[str, str]


@dataclass
class _Session:
    identity: str | None
    refresh_token: str
    access_tokens: dict[str, float] = field(default_factory=dict)  # token -> expiry


class FakeQwenOAuth(LocalServer):
    """A stand-in Qwen OAuth server; see the module docstring for the knobs."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        interval: float | None = 0.05,
        device_expires_in: float = 300,
        pending_polls: int = 1,
        slow_down_polls: int = 0,
        outcome: Outcome = "approve",
        identity: str | None = None,
        token_lifetime: float = 21600,
        rotate_refresh_tokens: bool = True,
        resource_url: str = "portal.qwen.ai",
        client_id: str = DEFAULT_CLIENT_ID,
    ) -> None:
        self.interval = interval
        self.device_expires_in = device_expires_in
        self.pending_polls = pending_polls
        self.slow_down_polls = slow_down_polls
        self.outcome: Outcome = outcome
        self.identity = identity
        self.token_lifetime = token_lifetime
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.resource_url = resource_url
        self.client_id = client_id
        self.html_mode = False
        self.refresh_delay = 0.0
        self.refresh_failure: RefreshFailure | None = None
        self.dead_refresh_error: Literal["invalid_request", "invalid_grant"] = (
            "invalid_request"
        )

        self.counts: Counter[str] = Counter()
        self.requests: list[RecordedRequest] = []
        self.issued: list[str] = []
        """Every access and refresh token handed out (for leak tests)."""
        self._lock = threading.RLock()
        self._grants: dict[str, _Grant] = {}
        self._sessions: dict[str, _Session] = {}  # refresh token -> session
        super().__init__(
            _make_handler(self), host=host, port=port, name="fake-qwen-oauth"
        )

    # --- running ---------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.base_url

    # --- control ---------------------------------------------------------------

    def approve(self, user_code: str | None = None) -> None:
        """Approve the pending login with ``user_code`` (default: every one)."""
        self._decide("approve", user_code)

    def deny(self, user_code: str | None = None) -> None:
        self._decide("deny", user_code)

    def _decide(self, decision: Outcome, user_code: str | None) -> None:
        with self._lock:
            for g in self._grants.values():
                if user_code is None or g.user_code == user_code:
                    g.decision = decision

    def revoke(self, refresh_token: str | None = None) -> None:
        """Kill one refresh token (default: all); its refreshes get an error."""
        with self._lock:
            if refresh_token is None:
                self._sessions.clear()
            else:
                self._sessions.pop(refresh_token, None)

    def issue_tokens(self, identity: str | None = None) -> dict[str, Any]:
        """Tokens as after a login, without the device flow (to seed a test)."""
        with self._lock:
            return self._new_session(identity)

    def is_valid_access_token(self, token: str) -> bool:
        """True for a live access token of a live session."""
        now = time.time()
        with self._lock:
            return any(
                s.access_tokens.get(token, 0) > now for s in self._sessions.values()
            )

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()
            self.requests.clear()

    # --- endpoints -------------------------------------------------------------

    def handle(
        self, path: str, form: dict[str, str], headers: dict[str, str]
    ) -> tuple[int, bytes, str]:
        with self._lock:
            self.counts["requests"] += 1
            self.requests.append(RecordedRequest(path, dict(form), dict(headers)))
            html = self.html_mode
        if html:
            return 200, HTML_PAGE, "text/html; charset=utf-8"
        if path == DEVICE_CODE_PATH:
            return self._device_code(form)
        if path == TOKEN_PATH:
            grant_type = form.get("grant_type")
            if form.get("client_id") != self.client_id:
                return _error(400, "invalid_client", "Invalid client_id")
            if grant_type == DEVICE_GRANT_TYPE:
                return self._poll(form)
            if grant_type == REFRESH_GRANT_TYPE:
                return self._refresh(form)
            return _error(400, "unsupported_grant_type", f"grant_type {grant_type}")
        return _error(404, "not_found", f"no endpoint {path}")

    def _device_code(self, form: dict[str, str]) -> tuple[int, bytes, str]:
        with self._lock:
            self.counts["device_code"] += 1
        if form.get("client_id") != self.client_id:
            return _error(400, "invalid_client", "Invalid client_id")
        if form.get("code_challenge_method") != "S256" or not form.get(
            "code_challenge"
        ):
            return _error(400, "invalid_request", "PKCE S256 code_challenge required")
        grant = _Grant(
            device_code=secrets.token_urlsafe(24),
            user_code=f"{secrets.randbelow(10**8):08d}",
            challenge=form["code_challenge"],
            created=time.monotonic(),
            expires_in=self.device_expires_in,
            identity=self.identity,
        )
        with self._lock:
            self._grants[grant.device_code] = grant
        body: dict[str, Any] = {
            "device_code": grant.device_code,
            "user_code": grant.user_code,
            "verification_uri": f"{self.url}/authorize",
            "verification_uri_complete": (
                f"{self.url}/authorize?user_code={grant.user_code}&client=qwen-code"
            ),
            "expires_in": int(grant.expires_in)
            if float(grant.expires_in).is_integer()
            else grant.expires_in,
        }
        if self.interval is not None:
            body["interval"] = self.interval
        return _json(200, body)

    def _poll(self, form: dict[str, str]) -> tuple[int, bytes, str]:
        with self._lock:
            self.counts["token_poll"] += 1
            grant = self._grants.get(form.get("device_code", ""))
            if grant is None or grant.used:
                return _error(400, "invalid_grant", "Unknown or used device_code")
            if time.monotonic() > grant.created + grant.expires_in:
                return _error(400, "expired_token", "Device code expired")
            verifier = form.get("code_verifier", "")
            if not verifier or pkce_challenge(verifier) != grant.challenge:
                return _error(400, "invalid_grant", "PKCE verification failed")
            grant.polls += 1
            if grant.polls <= self.slow_down_polls:
                return _error(429, "slow_down", "Polling too frequently")
            decision = grant.decision
            if decision is None:
                waited = grant.polls - self.slow_down_polls
                if waited <= self.pending_polls or self.outcome == "wait":
                    return _error(400, "authorization_pending", "Authorization pending")
                decision = self.outcome
            if decision == "deny":
                return _error(400, "access_denied", "User denied the authorization")
            if decision == "expire":
                return _error(400, "expired_token", "Device code expired")
            grant.used = True
            return _json(200, self._new_session(grant.identity))

    def _refresh(self, form: dict[str, str]) -> tuple[int, bytes, str]:
        with self._lock:
            self.counts["refresh"] += 1
            delay = self.refresh_delay
            failure = self.refresh_failure
        if delay:
            time.sleep(delay)
        if failure == "server_error":
            return _error(500, "server_error", "Internal error")
        if failure == "unavailable":
            return 503, UNAVAILABLE_PAGE, "text/html"
        if failure == "drop":
            raise DropConnection
        if failure == "invalid_grant":
            return _error(400, "invalid_grant", "Refresh token expired")
        with self._lock:
            session = self._sessions.get(form.get("refresh_token", ""))
            if session is None:
                if self.dead_refresh_error == "invalid_grant":
                    return _error(400, "invalid_grant", "Invalid refresh token")
                return _error(
                    400, "invalid_request", "Invalid refresh token or client_id"
                )
            return _json(
                200, self._tokens_for(session, rotate=self.rotate_refresh_tokens)
            )

    def _new_session(self, identity: str | None) -> dict[str, Any]:
        session = _Session(identity, refresh_token="")
        return self._tokens_for(session, rotate=True)

    def _tokens_for(self, session: _Session, *, rotate: bool) -> dict[str, Any]:
        access = "fake-at-" + secrets.token_urlsafe(24)
        session.access_tokens[access] = time.time() + self.token_lifetime
        self.issued.append(access)
        answer: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.token_lifetime,
            "resource_url": self.resource_url,
        }
        if rotate:
            self._sessions.pop(session.refresh_token, None)
            session.refresh_token = "fake-rt-" + secrets.token_urlsafe(24)
            self._sessions[session.refresh_token] = session
            self.issued.append(session.refresh_token)
            answer["refresh_token"] = session.refresh_token
        if session.identity:
            answer["id_token"] = _fake_jwt(session.identity)
        return answer


def _fake_jwt(identity: str) -> str:
    def part(data: dict[str, Any]) -> str:
        raw = json.dumps(data, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    claims = {"sub": hashlib.sha256(identity.encode()).hexdigest()[:16]}
    claims["email"] = identity
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.fake"


def _json(status: int, body: Mapping[str, Any]) -> tuple[int, bytes, str]:
    return status, json.dumps(body).encode(), "application/json"


def _error(status: int, error: str, description: str) -> tuple[int, bytes, str]:
    return _json(status, {"error": error, "error_description": description})


def _make_handler(fake: FakeQwenOAuth) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "FakeQwenOAuth/1"
        # TCP_NODELAY, like a real server: with Nagle on, the body (a second small
        # write after the headers) can wait for the client's delayed ACK.
        disable_nagle_algorithm = True

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode("utf-8", "replace")
            form = dict(parse_qsl(raw, keep_blank_values=True))
            headers = {k.lower(): v for k, v in self.headers.items()}
            path = self.path.split("?", 1)[0]
            try:
                status, body, content_type = fake.handle(path, form, headers)
            except DropConnection:
                self.close_connection = True
                return
            self._answer(status, body, content_type)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/authorize":
                page = (
                    b"<html><body><h1>Fake Qwen login</h1>"
                    b"<p>This stand-in approves logins by itself.</p></body></html>"
                )
                self._answer(200, page, "text/html; charset=utf-8")
            else:
                self._answer(*_error(404, "not_found", f"no page {path}"))

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status, HTTPStatus(status).phrase)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: tests read counts, not access logs

    return Handler


def main(argv: list[str] | None = None) -> int:
    """Run a fake server until Ctrl-C; its URL is the first line printed."""
    parser = argparse.ArgumentParser(
        prog="python -m qwen_oauth_mitm.oauth.fake_server",
        description="A fake Qwen OAuth server on 127.0.0.1, for tests and demos. "
        "Point qwen-oauth at it with QWEN_OAUTH_BASE_URL=<printed URL>.",
    )
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument("--interval", type=float, default=1.0, help="poll interval")
    parser.add_argument(
        "--pending-polls", type=int, default=2, help="polls before approval"
    )
    parser.add_argument("--token-lifetime", type=float, default=21600)
    parser.add_argument("--identity", default=None, help="e-mail of the fake user")
    args = parser.parse_args(argv)
    fake = FakeQwenOAuth(
        port=args.port,
        interval=args.interval,
        pending_polls=args.pending_polls,
        token_lifetime=args.token_lifetime,
        identity=args.identity,
    )
    with fake:
        sys.stdout.write(f"{fake.url}\n")
        sys.stdout.flush()
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
