"""The one-command stand-in for the Qwen portal: OAuth, chat and an admin API on
one port of 127.0.0.1 (``python -m qwen_oauth_mitm.portal``).

It is a :class:`~.chat.FakePortal` (the chat endpoint, its answers and faults) that
also answers the OAuth endpoints with an embedded
:class:`~qwen_oauth_mitm.oauth.fake_server.FakeQwenOAuth` (device flow approved after
a few polls, PKCE checked, rotating refresh tokens, a revoked refresh token refused
with ``invalid_grant``), and a small admin API for tests and the demo. URLs, for a
stand-in at ``http://127.0.0.1:PORT``:

- ``QWEN_OAUTH_BASE_URL=http://127.0.0.1:PORT`` (``/api/v1/oauth2/device/code``,
  ``/api/v1/oauth2/token``, and the ``/authorize`` page a login link opens);
- ``QWEN_API_BASE_URL=http://127.0.0.1:PORT/v1`` (``POST /v1/chat/completions``);
- ``GET /admin/stats``: what it received, per account (requests, statuses, streamed,
  faults served, prompt/cached/completion tokens), the OAuth counters, and the
  last requests;
- ``POST /admin/faults`` with JSON ``{"kind": "429", "retry_after": 30}`` plus
  optionally ``"account"`` (an account name from the stats) or ``"token"``, and
  ``"count"`` (default 1; 0 = until cleared). Without a target the fault goes to
  the next requests, whichever account makes them. Kinds and fields are those of
  :class:`~.chat.Fault`; ``DELETE /admin/faults`` clears them all;
- ``POST /admin/replies`` with JSON ``{"replies": [{"tool": "read", "arguments":
  {"filePath": "/tmp/x"}, "id": "call_1"}, {"text": "Done."}]}``: scripted replies
  (:meth:`~.chat.FakePortal.reply_with`: a tool call, ``id`` optional, or text) for
  the next requests that offer tools and do not end with a tool result, whichever
  account makes them; ``DELETE /admin/replies`` clears them;
- ``POST /admin/revoke`` ``{"account": NAME}``: its refresh token dies (the next
  refresh gets ``invalid_grant``) and its access tokens stop working (401);
- ``POST /admin/login`` ``{"identity": "x@y"}``: who approves the next login;
- ``DELETE /admin/stats``: counters back to zero.

Accounts are named after who logged in: the n-th device login is
``userN@qwen-stand-in.invalid`` (sent in an ``id_token``, so ``qwen-oauth`` tells
them apart), and a refreshed token stays with its account. An API key (``keys``) is
its own account.

Prompt cache: the usage of every answer carries
``prompt_tokens_details.cached_tokens``, the tokens of the longest prefix of the
request (its tools and messages) that the same account has seen before, so a test
can measure whether a conversation stayed on one account. Token counts are
estimates (about four characters a token).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import threading
import time
import typing
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from qwen_oauth_mitm.oauth.fake_server import FakeQwenOAuth
from qwen_oauth_mitm.oauth.protocol import DEVICE_CODE_PATH, TOKEN_PATH
from qwen_oauth_mitm.portal.chat import (
    FakePortal,
    Fault,
    FaultKind,
    Reply,
    Text,
    ToolCall,
    _Answer,
    _error,
)

HOST = "127.0.0.1"
DEFAULT_TEXT = (
    "Hello from the Qwen portal stand-in! Your request went through mitmproxy, "
    "the addon picked an account and translated it. 你好, 世界 🌏 — ça marche."
)
IDENTITY_DOMAIN = "qwen-stand-in.invalid"
_RECENT = 50
_PREFIXES_PER_ACCOUNT = 20_000

_AUTHORIZE_PAGE = (
    b"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Qwen stand-in login"
    b"</title></head><body><h1>Qwen portal stand-in</h1><p>This stand-in approves "
    b"device logins by itself after a few polls: go back to the terminal.</p>"
    b"</body></html>"
)


class _EmbeddedOAuth(FakeQwenOAuth):
    """A :class:`FakeQwenOAuth` that is served by the stand-in's port, not its own."""

    def __init__(self, url: Callable[[], str], **knobs: Any) -> None:
        super().__init__(host=HOST, port=0, **knobs)
        # Its own listening socket is never served: close it at once.
        self._server.server_close()
        self._own_url = url

    @property
    def url(self) -> str:
        return self._own_url()

    def start(self) -> typing.Self:
        return self  # served by the stand-in


@dataclass
class AccountStats:
    requests: int = 0
    streamed: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    last_cached_tokens: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "streamed": self.streamed,
            "statuses": dict(self.statuses),
            "faults": dict(self.faults),
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "completion_tokens": self.completion_tokens,
            "last_cached_tokens": self.last_cached_tokens,
        }


@dataclass
class _Queued:
    fault: Fault
    remaining: int | None  # None: until cleared


@dataclass
class _Seen:
    """What one request's handling noted (per thread)."""

    fault: Fault | None = None
    usage: dict[str, Any] | None = None


class StandIn(FakePortal):
    """The Qwen portal stand-in; see the module docstring."""

    def __init__(
        self,
        *,
        port: int = 0,
        keys: Iterable[str] = (),
        text: str = DEFAULT_TEXT,
        chunk_delay: float = 0.0,
        interval: float | None = 1.0,
        pending_polls: int = 2,
        token_lifetime: float = 21600,
        device_expires_in: float = 300,
    ) -> None:
        super().__init__(
            None, keys=keys, text=text, chunk_delay=chunk_delay, host=HOST, port=port
        )
        self.auth = _EmbeddedOAuth(
            lambda: self.base_url,
            interval=interval,
            pending_polls=pending_polls,
            token_lifetime=token_lifetime,
            device_expires_in=device_expires_in,
        )
        self.auth.dead_refresh_error = "invalid_grant"
        self.oauth = self.auth
        self._admin_lock = threading.RLock()
        self._account_of: dict[str, str] = {k: k for k in self.keys}
        self._refresh_of: dict[str, list[str]] = {}  # account -> refresh tokens
        self._logins = 0
        self._next_identity: str | None = None
        self._queued: dict[str | None, list[_Queued]] = {}  # None: any account
        self._token_faults: dict[str, list[_Queued]] = {}
        self._stats: dict[str, AccountStats] = {}
        self._prefixes: dict[str, set[str]] = {}
        self._recent: deque[dict[str, Any]] = deque(maxlen=_RECENT)
        self._seen = threading.local()

    # --- accounts ---------------------------------------------------------------

    def account_of(self, token: str) -> str | None:
        """The account a token (access or refresh token, or API key) belongs to."""
        with self._admin_lock:
            return self._account_of.get(token)

    def _note_tokens(self, account: str, answer: dict[str, Any]) -> None:
        with self._admin_lock:
            for key in ("access_token", "refresh_token"):
                token = answer.get(key)
                if isinstance(token, str):
                    self._account_of[token] = account
            refresh = answer.get("refresh_token")
            if isinstance(refresh, str):
                self._refresh_of.setdefault(account, []).append(refresh)

    def revoke(self, account: str) -> bool:
        """Kill an account's refresh and access tokens; False if unknown."""
        with self._admin_lock:
            tokens = [t for t, a in self._account_of.items() if a == account]
            refresh = self._refresh_of.get(account, [])
        if not tokens:
            return False
        for token in refresh:
            self.auth.revoke(token)  # and with it the session's access tokens
        self.keys.difference_update(tokens)
        return True

    # --- faults -----------------------------------------------------------------

    def add_fault(
        self,
        fault: Fault,
        *,
        account: str | None = None,
        token: str | None = None,
        count: int = 1,
    ) -> None:
        """Queue ``fault`` for ``count`` requests (0: until cleared) of ``account``,
        of ``token``, or (neither) of any account."""
        entry = _Queued(fault, count or None)
        with self._admin_lock:
            if token is not None:
                self._token_faults.setdefault(token, []).append(entry)
            else:
                self._queued.setdefault(account, []).append(entry)

    def clear_faults(self) -> None:
        with self._admin_lock:
            self._queued.clear()
            self._token_faults.clear()
        with self._lock:
            self._faults.clear()

    def take_fault(self, token: str) -> Fault | None:
        fault = super().take_fault(token)
        account = self.account_of(token)
        if fault is None and account is not None:  # a bad token takes no fault
            with self._admin_lock:
                for queue in (
                    self._token_faults.get(token),
                    self._queued.get(account),
                    self._queued.get(None),
                ):
                    if queue:
                        entry = queue[0]
                        fault = entry.fault
                        if entry.remaining is not None:
                            entry.remaining -= 1
                            if entry.remaining <= 0:
                                queue.pop(0)
                        break
        _current(self._seen).fault = fault
        return fault

    # --- usage and the prompt cache -------------------------------------------------

    def usage(self, token: str, body: dict[str, Any]) -> dict[str, Any]:
        account = self.account_of(token) or "?"
        pieces = [json.dumps(body.get("tools") or [], sort_keys=True)]
        pieces += [
            json.dumps(m, sort_keys=True, ensure_ascii=False)
            for m in body.get("messages") or []
        ]
        digest = hashlib.sha256()
        prompt = cached = 0
        with self._admin_lock:
            seen = self._prefixes.setdefault(account, set())
            for piece in pieces:
                digest.update(piece.encode())
                prompt += _tokens(piece) if piece != "[]" else 0
                key = digest.hexdigest()
                if key in seen:
                    cached = prompt
                elif len(seen) < _PREFIXES_PER_ACCOUNT:
                    seen.add(key)
        completion = _tokens(self.text)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }
        _current(self._seen).usage = usage
        return usage

    # --- the requests -----------------------------------------------------------

    def answer(self, token: str, body: Any, headers: dict[str, str]) -> _Answer:
        self._seen.current = _Seen()
        result = super().answer(token, body, headers)
        seen = _current(self._seen)
        account = self.account_of(token) or "?"
        stream = bool(isinstance(body, dict) and body.get("stream"))
        with self._admin_lock:
            stats = self._stats.setdefault(account, AccountStats())
            stats.requests += 1
            stats.statuses[str(result.status)] += 1
            if stream and result.status == 200:
                stats.streamed += 1
            if seen.fault is not None:
                stats.faults[seen.fault.kind] += 1
            cached = prompt = 0
            if seen.usage is not None:
                prompt = int(seen.usage["prompt_tokens"])
                cached = int(seen.usage["prompt_tokens_details"]["cached_tokens"])
                stats.prompt_tokens += prompt
                stats.cached_tokens += cached
                stats.completion_tokens += int(seen.usage["completion_tokens"])
                stats.last_cached_tokens = cached
            self._recent.append(
                {
                    "at": time.time(),
                    "account": account,
                    "status": result.status,
                    "stream": stream,
                    "fault": seen.fault.kind if seen.fault else None,
                    "prompt_tokens": prompt,
                    "cached_tokens": cached,
                }
            )
        return result

    def stats(self) -> dict[str, Any]:
        """What ``GET /admin/stats`` answers."""
        with self._admin_lock:
            accounts = {name: s.as_json() for name, s in sorted(self._stats.items())}
            recent = list(self._recent)
            pending = sum(len(q) for q in self._queued.values()) + sum(
                len(q) for q in self._token_faults.values()
            )
        with self.auth._lock:
            oauth = dict(self.auth.counts)
        return {
            "url": self.base_url,
            "requests": sum(a["requests"] for a in accounts.values()),
            "accounts": accounts,
            "oauth": oauth,
            "faults_pending": pending,
            "replies_pending": len(self.pending_replies()),
            "recent": recent,
        }

    def reset_stats(self) -> None:
        with self._admin_lock:
            self._stats.clear()
            self._recent.clear()
            self._prefixes.clear()
        self.auth.reset_counts()
        with self._lock:
            self.requests.clear()

    def route(
        self, method: str, path: str, headers: dict[str, str], raw: bytes
    ) -> _Answer:
        if path in (DEVICE_CODE_PATH, TOKEN_PATH) and method == "POST":
            return self._oauth(path, raw, headers)
        if path == "/authorize" and method == "GET":
            return _Answer(200, _AUTHORIZE_PAGE, {"Content-Type": "text/html"})
        if path.startswith("/admin/"):
            return self._admin(method, path, raw)
        if path in ("", "/") and method == "GET":
            return _json(200, {"stand_in": "qwen-portal", **self._urls()})
        return super().route(method, path, headers, raw)

    def _urls(self) -> dict[str, str]:
        return {
            "QWEN_OAUTH_BASE_URL": self.base_url,
            "QWEN_API_BASE_URL": self.url,
            "stats": f"{self.base_url}/admin/stats",
        }

    def _oauth(self, path: str, raw: bytes, headers: dict[str, str]) -> _Answer:
        form = dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
        with self._admin_lock:  # one login's identity at a time
            if path == DEVICE_CODE_PATH:
                self._logins += 1
                self.auth.identity = self._next_identity or (
                    f"user{self._logins}@{IDENTITY_DOMAIN}"
                )
                self._next_identity = None
            status, body, content_type = self.auth.handle(path, form, headers)
        if path == TOKEN_PATH and status == 200:
            answer = json.loads(body)
            if form.get("grant_type", "").endswith("device_code"):
                account = _email(answer.get("id_token")) or "?"
            else:
                account = self.account_of(form.get("refresh_token", "")) or "?"
            self._note_tokens(account, answer)
        return _Answer(status, body, {"Content-Type": content_type})

    def _admin(self, method: str, path: str, raw: bytes) -> _Answer:
        try:
            body: Any = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return _error(400, "invalid_json", "the body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "invalid_json", "the body is not a JSON object")
        match method, path:
            case "GET", "/admin/stats":
                return _json(200, self.stats())
            case "DELETE", "/admin/stats":
                self.reset_stats()
                return _json(200, {"reset": True})
            case "POST", "/admin/faults":
                return self._admin_fault(body)
            case "DELETE", "/admin/faults":
                self.clear_faults()
                return _json(200, {"cleared": True})
            case "POST", "/admin/replies":
                return self._admin_replies(body)
            case "DELETE", "/admin/replies":
                self.clear_replies()
                return _json(200, {"cleared": True})
            case "POST", "/admin/revoke":
                name = str(body.get("account", ""))
                if not self.revoke(name):
                    return _error(404, "unknown_account", f"no account {name!r}")
                return _json(200, {"revoked": name})
            case "POST", "/admin/login":
                with self._admin_lock:
                    self._next_identity = str(body.get("identity") or "") or None
                return _json(200, {"next_identity": self._next_identity})
        return _error(404, "not_found", f"no admin endpoint {method} {path}")

    def _admin_fault(self, body: dict[str, Any]) -> _Answer:
        kinds = typing.get_args(FaultKind)
        if body.get("kind") not in kinds:
            return _error(400, "invalid_fault", f"kind must be one of {list(kinds)}")
        names = {f.name for f in dataclasses.fields(Fault)}
        targets = {"account", "token", "count"}
        unknown = set(body) - names - targets
        if unknown:
            return _error(400, "invalid_fault", f"unknown fields {sorted(unknown)}")
        try:
            fault = Fault(**{k: v for k, v in body.items() if k in names})
            count = int(body.get("count", 1))
        except (TypeError, ValueError) as e:
            return _error(400, "invalid_fault", str(e))
        if count < 0:
            return _error(400, "invalid_fault", "count must be 0 (forever) or more")
        account = body.get("account")
        token = body.get("token")
        self.add_fault(
            fault,
            account=str(account) if account is not None else None,
            token=str(token) if token is not None else None,
            count=count,
        )
        target = (
            f"account {account}"
            if account is not None
            else "a token"
            if token is not None
            else "the next requests"
        )
        return _json(
            200,
            {
                "queued": dataclasses.asdict(fault),
                "for": target,
                "count": count or "until cleared",
            },
        )

    def _admin_replies(self, body: dict[str, Any]) -> _Answer:
        specs = body.get("replies")
        if not isinstance(specs, list) or set(body) != {"replies"}:
            return _error(400, "invalid_reply", 'send {"replies": [...]}')
        try:
            replies = [_parse_reply(spec) for spec in specs]
        except ValueError as e:
            return _error(400, "invalid_reply", str(e))
        self.reply_with(*replies)
        return _json(
            200,
            {"queued": len(replies), "pending": len(self.pending_replies())},
        )


def _parse_reply(spec: object) -> Reply:
    """``{"text": str}`` or ``{"tool": str, "arguments": {...}, "id": str}``."""
    if isinstance(spec, dict) and set(spec) == {"text"}:
        if isinstance(spec["text"], str):
            return Text(spec["text"])
    elif isinstance(spec, dict) and "tool" in spec:
        name, arguments = spec["tool"], spec.get("arguments", {})
        call_id = spec.get("id")
        if (
            set(spec) <= {"tool", "arguments", "id"}
            and isinstance(name, str)
            and name
            and isinstance(arguments, dict)
            and isinstance(call_id, str | None)
        ):
            if call_id is None:
                return ToolCall(name, arguments)
            return ToolCall(name, arguments, call_id)
    raise ValueError(
        'a reply is {"text": "..."} or {"tool": NAME, "arguments": {...}, '
        f'"id": "call_..."}}, not {json.dumps(spec)}'
    )


def _current(local: threading.local) -> _Seen:
    seen = getattr(local, "current", None)
    if not isinstance(seen, _Seen):
        seen = local.current = _Seen()
    return seen


def _tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


def _email(id_token: object) -> str | None:
    if not isinstance(id_token, str) or id_token.count(".") < 2:
        return None
    part = id_token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (ValueError, binascii.Error):
        return None
    email = claims.get("email") if isinstance(claims, dict) else None
    return email if isinstance(email, str) else None


def _json(status: int, body: Any) -> _Answer:
    data = json.dumps(body, ensure_ascii=False, indent=1).encode()
    return _Answer(status, data, {"Content-Type": "application/json"})
