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
    """The secrets this process knows; :meth:`redact` hides every one of them.

    Found through an index of their first :data:`MIN_SECRET_LENGTH` characters,
    looked up at each position of the runs of non-space text long enough to
    hold one: registering costs a dict entry, and redacting grows with the text,
    not with the number of secrets. (One regular expression of all the secrets
    had to be compiled anew at every token refresh: some 70 ms with a thousand,
    on mitmproxy's event loop, and megabytes of memory.)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: dict[str, str] = {}  # secret -> fingerprint, oldest first
        self._index: dict[str, tuple[str, ...]] = {}  # prefix -> secrets, longest first
        self._spaced: tuple[str, ...] = ()  # secrets with white space (not in runs)

    def add(self, *secrets: str | SecretStr | None) -> None:
        """Register secrets (``None``, empty and very short values are ignored);
        one already known becomes the newest again."""
        with self._lock:
            for s in secrets:
                value = s.get_secret_value() if isinstance(s, SecretStr) else s
                if not value or len(value) < MIN_SECRET_LENGTH:
                    continue
                fp = self._secrets.pop(value, None)
                self._secrets[value] = fp or fingerprint(value)
                if fp is None:
                    self._indexed(value, add=True)
            while len(self._secrets) > MAX_REGISTERED:
                oldest = next(iter(self._secrets))
                del self._secrets[oldest]
                self._indexed(oldest, add=False)

    def _indexed(self, secret: str, *, add: bool) -> None:
        """Put ``secret`` in (or take it out of) the lookup structures."""
        if _SPACE.search(secret):
            rest = [x for x in self._spaced if x != secret]
            spaced = sorted([*rest, secret] if add else rest, key=len, reverse=True)
            self._spaced = tuple(spaced)
            return
        key = secret[:MIN_SECRET_LENGTH]
        rest = [x for x in self._index.get(key, ()) if x != secret]
        # Longest first, so a secret that contains another is hidden whole.
        group = sorted([*rest, secret] if add else rest, key=len, reverse=True)
        if group:
            self._index[key] = tuple(group)
        else:
            self._index.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._secrets.clear()
            self._index = {}
            self._spaced = ()

    def __len__(self) -> int:
        return len(self._secrets)

    def redact(self, text: str) -> str:
        """``text`` with every registered secret and every token pattern hidden."""
        if self._index:
            text = _RUN.sub(self._hide_in_run, text)
        for secret in self._spaced:
            text = text.replace(secret, self._secrets.get(secret, "[redacted]"))
        text = _JSON_VALUE.sub(_hide_group2, text)
        text = _KEY_VALUE.sub(_hide_group2, text)
        text = _QUERY_VALUE.sub(_hide_group2, text)
        text = _AUTHORIZATION.sub(_hide_group2, text)
        return _BEARER.sub(_hide_group2, text)

    def _hide_in_run(self, m: re.Match[str]) -> str:
        run, index, known = m[0], self._index, self._secrets
        out: list[str] = []
        i = start = 0
        last = len(run) - MIN_SECRET_LENGTH
        while i <= last:
            found = None
            for secret in index.get(run[i : i + MIN_SECRET_LENGTH], ()):
                if run.startswith(secret, i):
                    found = secret
                    break
            if found is None:
                i += 1
                continue
            out += (run[start:i], known.get(found, "[redacted]"))
            i = start = i + len(found)
        if not out:
            return run
        out.append(run[start:])
        return "".join(out)


_RUN = re.compile(rf"\S{{{MIN_SECRET_LENGTH},}}")
"""Text that can hold a registered secret: one without white space."""
_SPACE = re.compile(r"\s")


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
