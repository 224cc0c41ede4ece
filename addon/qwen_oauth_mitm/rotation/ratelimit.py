"""What an upstream error answer means for the account that received it.

Pure; no I/O, no clock (``now`` is passed in). :func:`classify_error` turns a
status, headers and body into a :class:`Verdict`:

====================  =============================================  ==============
kind                  answers                                        cooldown
====================  =============================================  ==============
``quota``             429/403 ``insufficient_quota``, "Free          until the next
                      allocated quota exceeded"                      daily reset
``rate_limit``        any other 429 (``Throttling.RateQuota``,       the hint, else
                      "Requests throttling triggered", unknown)      the default
``auth``              401                                            none (refresh)
``account``           other 403: the account is refused              failure rules
``upstream``          5xx (a 504 HTML page under long contexts):     none
                      the service failed, not the account
``client``            other 4xx: the request is wrong                none
====================  =============================================  ==============

Hints for when to retry come, in this order, from ``retry-after-ms``,
``Retry-After`` (seconds or an HTTP date) and the JSON body (``retry_after``-like
fields, a ``retryDelay`` of ``"30s"``, or "retry after 30 seconds" in the message).
A hint is kept within [1 s, 24 h] so garbage cannot park an account for a year.

An error object the upstream sends under HTTP 200 (a whole answer that is
``{"error": ...}``, or a stream's first event) is read as the status it stands for
(:func:`embedded_error_status`) and then classified like any other error answer.
Throttling is tested before quota because DashScope's ``Throttling.AllocationQuota``
("Allocated quota exceeded") is a seconds-long throttle, not the daily quota:
mistaking a throttle for the quota would cost the account the rest of its day.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

VerdictKind = Literal["quota", "rate_limit", "auth", "account", "upstream", "client"]

MIN_HINT_SECONDS = 1.0
MAX_HINT_SECONDS = 86_400.0
MAX_BODY_BYTES = 1 << 20
"""Larger error bodies are not parsed (an error body is a few hundred bytes)."""

_QUOTA_TEXT = re.compile(
    r"free allocated quota exceeded|insufficient[_ ]quota|exceeded your current quota",
    re.IGNORECASE,
)
_THROTTLE_TEXT = re.compile(r"throttl", re.IGNORECASE)
_RATE_LIMIT_TEXT = re.compile(r"rate[_ ]?limit|too many requests", re.IGNORECASE)
_STATUS_KEYS = ("status", "status_code", "http_status", "code")
_HINT_TEXT = re.compile(
    r"(?:retry|try again)\s+(?:after|in)\s+(\d+(?:\.\d+)?)\s*"
    r"(ms|milliseconds?|s|secs?|seconds?|m|mins?|minutes?|h|hours?)?\b",
    re.IGNORECASE,
)
_DURATION_TEXT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*", re.IGNORECASE)
_HINT_KEYS_SECONDS = ("retry_after", "retryafter", "retry_after_seconds", "retrydelay")
_HINT_KEYS_MS = ("retry_after_ms", "retryafterms")
_UNIT_SECONDS = {"m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True)
class Verdict:
    """The meaning of one error answer."""

    kind: VerdictKind
    status: int
    until: float | None = None
    """End of the account's cooldown (``quota`` and ``rate_limit`` only)."""
    retry_after: float | None = None
    """The answer's own hint in seconds, when it had one."""
    detail: str = ""
    """Status and upstream code/message, for logs and the accounts table."""


def classify_error(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    reset_tz: dt.tzinfo,
    default_cooldown: float,
) -> Verdict:
    """Classify an upstream answer with ``status`` >= 400 (see the module table)."""
    if status < 400:
        raise ValueError(f"status {status} is not an error")
    payload = _parse_json(body)
    code, message = _error_code_and_message(payload)
    detail = " ".join(p for p in (str(status), code, message) if p)[:200]
    hint = header_retry_after(headers, now)
    if hint is None and payload is not None:
        hint = body_retry_after(payload)
    markers = f"{code} {message}"

    def verdict(kind: VerdictKind, until: float | None = None) -> Verdict:
        return Verdict(kind, status, until, hint, detail)

    if status == 401:
        return verdict("auth")
    throttled = bool(_THROTTLE_TEXT.search(markers))
    quota = not throttled and bool(_QUOTA_TEXT.search(markers))
    if quota and status in (429, 403):
        # The daily quota is back only at the reset; a server hint pointing even
        # later is believed, one pointing earlier is not (it would only buy 429s).
        reset = next_quota_reset(now, reset_tz)
        return verdict("quota", max(reset, now + (hint or 0.0)))
    if status == 429:
        return verdict("rate_limit", now + (hint or default_cooldown))
    if status == 403:
        return verdict("account")
    if status >= 500:
        return verdict("upstream")
    return verdict("client")


def embedded_error_status(payload: object) -> int:
    """The HTTP status an error object that came under a 200 stands for.

    A status it names (``status``, ``status_code``, ``http_status`` or a numeric
    ``code``, 400-599); else 429 when its code or message speaks of throttling, a
    quota or a rate limit (so :func:`classify_error` cools the account down); else
    400 when its code blames the request (no failover: another account would
    refuse it too); else 502: the service failed, not the account.
    """
    if isinstance(payload, dict):
        error = payload.get("error")
        source = error if isinstance(error, dict) else payload
        for key in _STATUS_KEYS:
            value = source.get(key)
            # isdigit() alone takes "²" (int() refuses it), other scripts' digits
            # and strings past int()'s digit limit: any of them raised out of
            # the judging of a 200 answer, which then went unsettled.
            if (
                isinstance(value, str)
                and value.isascii()
                and value.isdigit()
                and len(value) <= 3
            ):
                value = int(value)
            if (
                isinstance(value, int)
                and not isinstance(value, bool)
                and (400 <= value <= 599)
            ):
                return value
    code, message = _error_code_and_message(payload)
    markers = f"{code} {message}"
    if any(p.search(markers) for p in (_THROTTLE_TEXT, _QUOTA_TEXT, _RATE_LIMIT_TEXT)):
        return 429
    if _REQUEST_FAULT_CODES.intersection(code.lower().split()):
        return 400  # the request's fault: another account would refuse it too
    return 502


_REQUEST_FAULT_CODES = frozenset(
    {
        "invalid_request_error",
        "invalidparameter",
        "invalid_parameter",
        "data_inspection_failed",
        "datainspectionfailed",
        "context_length_exceeded",
    }
)
"""Error codes (OpenAI's and DashScope's) that blame the request, not the service
or the account: a content-moderation refusal, a bad parameter, a prompt too long."""


# --- hints ----------------------------------------------------------------------------


def header_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds to wait per ``retry-after-ms`` or ``Retry-After``; None if absent/bad."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if (ms := _number(lowered.get("retry-after-ms"))) is not None:
        return _bounded(ms / 1000)
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    if (seconds := _number(raw)) is not None:
        return _bounded(seconds)
    return _http_date_delay(raw, now)


def body_retry_after(payload: object) -> float | None:
    """A retry hint in a JSON error body (fields or message text), in seconds."""
    for obj in _objects(payload, depth=4):
        for key, value in obj.items():
            k = key.lower()
            if k in _HINT_KEYS_MS and (ms := _number(value)) is not None:
                return _bounded(ms / 1000)
            if k in _HINT_KEYS_SECONDS and (s := _duration(value)) is not None:
                return _bounded(s)
        for value in obj.values():
            if isinstance(value, str) and (m := _HINT_TEXT.search(value)):
                return _bounded(float(m[1]) * _unit_seconds(m[2]))
    return None


def _unit_seconds(unit: str | None) -> float:
    """Seconds in one ``unit`` as matched by ``_HINT_TEXT`` (default: seconds)."""
    u = (unit or "s").lower()
    # "ms"/"millisecond(s)" first: by its first letter it would read as minutes.
    if u.startswith(("ms", "milli")):
        return 0.001
    return _UNIT_SECONDS.get(u[0], 1.0)


def _http_date_delay(raw: str, now: float) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError, OverflowError):  # a year of 20 digits
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; "-0000" parses as naive
        when = when.replace(tzinfo=dt.UTC)
    return _bounded(when.timestamp() - now)


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an int of 309 digits or more
            return None
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _duration(value: object) -> float | None:
    """A number of seconds, or a string such as ``"30"``, ``"1.5s"``, ``"250ms"``."""
    if not isinstance(value, str):
        return _number(value)
    m = _DURATION_TEXT.fullmatch(value)
    if m is None:
        return None
    return float(m[1]) * (0.001 if (m[2] or "").lower() == "ms" else 1.0)


def _bounded(seconds: float) -> float:
    return min(max(seconds, MIN_HINT_SECONDS), MAX_HINT_SECONDS)


# --- body -------------------------------------------------------------------------


def _parse_json(body: bytes) -> object | None:
    if not body or len(body) > MAX_BODY_BYTES:
        return None
    try:
        payload: object = json.loads(body)
    except (ValueError, RecursionError):  # HTML pages, truncated or odd bytes
        return None
    return payload


def _error_code_and_message(payload: object) -> tuple[str, str]:
    """OpenAI shape ``{"error": {code, type, message}}`` or DashScope's flat one."""
    if not isinstance(payload, dict):
        return "", ""
    error = payload.get("error")
    source = error if isinstance(error, dict) else payload
    code = source.get("code") or source.get("type") or ""
    message = source.get("message") or (error if isinstance(error, str) else "")
    kind = source.get("type")
    if isinstance(kind, str) and isinstance(code, str) and kind not in code:
        code = f"{code} {kind}".strip()
    return (code if isinstance(code, str) else str(code)), (
        message if isinstance(message, str) else ""
    )


def _objects(value: object, depth: int) -> list[dict[str, object]]:
    """The dicts in ``value`` down to ``depth`` levels (a list is a level too),
    outermost first; bounded so a hostile body cannot make this slow."""
    found: list[dict[str, object]] = []
    layer: list[object] = [value]
    for _ in range(depth):
        nxt: list[object] = []
        for item in layer:
            if isinstance(item, dict):
                found.append(item)
                nxt.extend(item.values())
            elif isinstance(item, list):
                nxt.extend(item[:20])
        layer = nxt
    return found


# --- the daily reset ----------------------------------------------------------------


def quota_day(now: float, tz: dt.tzinfo) -> str:
    """The ISO date of ``now`` in the quota-reset time zone."""
    return dt.datetime.fromtimestamp(now, tz).date().isoformat()


def next_quota_reset(now: float, tz: dt.tzinfo) -> float:
    """The next midnight after ``now`` in ``tz`` (when the daily quota comes back)."""
    today = dt.datetime.fromtimestamp(now, tz).date()
    midnight = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), tzinfo=tz)
    return midnight.timestamp()
