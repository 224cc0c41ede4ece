"""Keep secrets out of logs and messages.

Two layers, because neither alone is enough:

- a registry of *known* secrets: every token we load from the accounts file or
  receive from the OAuth server is registered, and any text containing one gets it
  replaced by a short fingerprint (``[redacted …a1b2]``, four hex digits of its
  SHA-256, so two log lines about the same token can be matched without revealing
  a single character of it);
- patterns for secrets we have not seen yet: ``Bearer <token>``; the value of an
  ``Authorization`` (or ``Proxy-Authorization``) header whatever its scheme
  (``Basic …``); the values of ``access_token`` / ``refresh_token`` / ``id_token``
  (also ``accessToken``, ``access-token``) / ``device_code`` / ``code_verifier`` /
  ``client_secret`` / ``password`` / ``api_key`` (``apikey``, ``api-key``,
  ``x-api-key``) in JSON (``"access_token": "…"``, also escaped inside a JSON
  string), Python reprs (``{'access_token': '…'}``), headers and YAML
  (``x-api-key: …``) and forms (``refresh_token=…``); and the query parameters
  ``token`` / ``key`` / ``code`` / ``secret`` / ``password`` of a URL
  (``?token=…``). Every pattern is anchored on a literal key and has no nested or
  overlapping repetition, so it runs in linear time on any input.

:class:`RedactingFilter` applies both to every log record that passes a handler
(message, arguments and traceback); :func:`install_redaction` puts it on handlers.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Iterable

from pydantic import SecretStr

MIN_SECRET_LENGTH = 8
"""Shorter strings are not registered: redacting them would mangle ordinary text."""
MAX_REGISTERED = 4096
"""Oldest secrets are forgotten past this many (tokens rotate every few hours)."""

_SECRET_KEYS = (
    "access[-_]?token",
    "refresh[-_]?token",
    "id[-_]?token",
    "device[-_]?code",
    "code[-_]?verifier",
    "client[-_]?secret",
    "password",
    "(?:x-)?api[-_]?key",
)
_KEYS = "|".join(_SECRET_KEYS)
_QUERY_KEYS = "token|key|code|secret|password"
_Q = r"""\\?["']"""  # a quote, maybe escaped (JSON inside a JSON string)
_VALUE = r"""(?!(?:null|None|true|false)\b)[^\s"'\\&,;<>()\[\]{}]+"""
"""A token: up to a space, quote, backslash or separator; not a JSON/Python null."""

_JSON_VALUE = re.compile(rf'("(?:{_KEYS})"\s*:\s*")([^"\\]*(?:\\.[^"\\]*)*)(")', re.I)
# key then ``:`` or ``=`` then the value, the key and value each maybe quoted:
# JSON, reprs, headers, YAML, forms.
_KEY_VALUE = re.compile(rf"(\b(?:{_KEYS})(?:{_Q})?\s*[:=]\s*(?:{_Q})?)({_VALUE})", re.I)
_QUERY_VALUE = re.compile(rf"([?&;](?:{_QUERY_KEYS})=)([^&#\s\"'<>]+)", re.I)
_AUTHORIZATION = re.compile(
    rf"(\b(?:proxy-)?authorization(?:{_Q})?\s*[:=]\s*(?:{_Q})?"
    rf"(?:(?:Basic|Bearer|Token|Digest|Negotiate|NTLM)\s+)?)({_VALUE})",
    re.I,
)
_BEARER = re.compile(r"(\bBearer\s+)([A-Za-z0-9._~+/=-]{4,})", re.I)


def fingerprint(secret: str) -> str:
    """A short, non-reversible tag for ``secret``: ``[redacted …a1b2]``."""
    digest = hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()
    return f"[redacted …{digest[:4]}]"


class SecretRegistry:
    """The secrets this process knows; :meth:`redact` hides every one of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: dict[str, str] = {}  # secret -> fingerprint, insertion order
        self._pattern: re.Pattern[str] | None = None

    def add(self, *secrets: str | SecretStr | None) -> None:
        """Register secrets (``None``, empty and very short values are ignored)."""
        with self._lock:
            changed = False
            for s in secrets:
                value = s.get_secret_value() if isinstance(s, SecretStr) else s
                if not value or len(value) < MIN_SECRET_LENGTH:
                    continue
                if value not in self._secrets:
                    self._secrets[value] = fingerprint(value)
                    changed = True
            while len(self._secrets) > MAX_REGISTERED:
                del self._secrets[next(iter(self._secrets))]
            if changed:
                # Longest first, so a secret that contains another is hidden whole.
                ordered = sorted(self._secrets, key=len, reverse=True)
                self._pattern = _compile_uncached("|".join(map(re.escape, ordered)))

    def clear(self) -> None:
        with self._lock:
            self._secrets.clear()
            self._pattern = None

    def __len__(self) -> int:
        return len(self._secrets)

    def redact(self, text: str) -> str:
        """``text`` with every registered secret and every token pattern hidden."""
        pattern, known = self._pattern, self._secrets
        if pattern is not None:
            text = pattern.sub(lambda m: known.get(m[0], "[redacted]"), text)
        text = _JSON_VALUE.sub(_hide_group2, text)
        text = _KEY_VALUE.sub(_hide_group2, text)
        text = _QUERY_VALUE.sub(_hide_group2, text)
        text = _AUTHORIZATION.sub(_hide_group2, text)
        return _BEARER.sub(_hide_group2, text)


def _compile_uncached(pattern: str) -> re.Pattern[str]:
    """``re.compile``, without leaving the pattern in ``re``'s cache.

    The cache keeps hundreds of patterns, and every registration builds a new,
    longer one (all the secrets): one per token refresh would stay there, some
    60 KiB each after 150 refreshes and growing (the soak saw the proxy's memory
    grow by 9 MiB). The registry holds the only one it needs.
    """
    compiled = re.compile(pattern)
    re.purge()
    return compiled


def _hide_group2(m: re.Match[str]) -> str:
    value = m[2]
    if value.startswith("[redacted"):
        return m[0]
    hidden = fingerprint(value) if value else value
    return m[1] + hidden + (m[3] if m.re.groups >= 3 else "")


REGISTRY = SecretRegistry()
"""The process-wide registry the log filter and :func:`redact` use."""


def register(*secrets: str | SecretStr | None) -> None:
    """Register secrets in the process-wide registry."""
    REGISTRY.add(*secrets)


def redact(text: str) -> str:
    """``text`` with every known secret and token pattern hidden."""
    return REGISTRY.redact(text)


class RedactingFilter(logging.Filter):
    """Rewrites each record so that no secret reaches a handler.

    The message is formatted with its arguments first (so a token passed as an
    argument is caught too) and the traceback, if any, is rendered and redacted
    into ``exc_text``, which formatters use instead of rendering it again.
    """

    def __init__(self, registry: SecretRegistry | None = None) -> None:
        super().__init__()
        self._registry = registry or REGISTRY

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what we can, redacted
            message = f"{record.msg!s} {record.args!r}"
        record.msg = self._registry.redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._registry.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self._registry.redact(record.stack_info)
        return True


def install_redaction(
    handlers: Iterable[logging.Handler] | None = None,
    *,
    registry: SecretRegistry | None = None,
) -> RedactingFilter:
    """Add one :class:`RedactingFilter` to ``handlers`` (default: the root logger's).

    Filters on handlers see every record that reaches them, including those
    propagated from child loggers (a filter on a logger would not). Handlers that
    already have a redacting filter are left alone, so calling this twice is safe.
    """
    flt = RedactingFilter(registry)
    targets = logging.getLogger().handlers if handlers is None else handlers
    for handler in targets:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(flt)
    return flt
