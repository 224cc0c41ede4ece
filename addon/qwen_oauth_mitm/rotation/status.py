"""Each account's state in words: for the accounts table and "all unavailable" errors.

Pure; no I/O, no clock. :func:`account_status` says whether an account can be
picked at ``now`` and, when not, why and until when; it is also the single place
that decides usability, so the table, the error message and the picker agree.
:func:`render_status_table` draws the plain-text table of the CLI's ``accounts``
command and the addon's ``qwen.accounts`` command. No token ever appears in it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from qwen_oauth_mitm.accounts import Account
from qwen_oauth_mitm.config import Config
from qwen_oauth_mitm.rotation import health as h
from qwen_oauth_mitm.rotation.state import AccountTrack

AccountState = Literal[
    "ok",
    "low_health",
    "bucket_empty",
    "rate_limited",
    "quota",
    "cooling",
    "disabled",
    "needs_relogin",
]
"""``ok`` and ``low_health`` can be picked (the latter only when no healthy account
can); the others cannot. ``low_health`` and ``bucket_empty`` exist only under the
hybrid strategy."""

_COOLDOWN_STATE: dict[str, AccountState] = {
    "rate_limit": "rate_limited",
    "quota": "quota",
    "failure": "cooling",
}
_UNTIL_TEXT: dict[AccountState, str] = {
    "rate_limited": "rate-limited until",
    "quota": "quota exhausted until",
    "cooling": "cooling after failures until",
    "bucket_empty": "bucket empty until",
}


@dataclass(frozen=True, slots=True)
class AccountStatus:
    """One account as rotation sees it at one moment."""

    account_id: str
    label: str
    state: AccountState
    until: float | None
    """When a cooling or empty-bucket account becomes usable again."""
    health: float
    tokens: float
    max_tokens: int
    requests_today: int
    rate_limits_today: int
    last_used: float | None
    detail: str | None = None
    """The upstream's note on the cooldown, when there is one."""

    @property
    def usable(self) -> bool:
        return self.state in ("ok", "low_health")

    def describe(self, now: float, tz: dt.tzinfo = dt.UTC) -> str:
        """The state in words: ``rate-limited until 12:03:10 UTC (in 50s)``."""
        if self.state in _UNTIL_TEXT and self.until is not None:
            return f"{_UNTIL_TEXT[self.state]} {format_moment(self.until, now, tz)}"
        return {
            "ok": "ok",
            "low_health": "low health (used only when no healthier one can be)",
            "disabled": "disabled",
            "needs_relogin": "needs re-login",
        }.get(self.state, self.state)


def account_status(
    account: Account,
    track: AccountTrack,
    now: float,
    config: Config,
    *,
    today: str,
) -> AccountStatus:
    """``account``'s state at ``now``; ``today`` is the quota-zone ISO date."""
    hybrid = config.rotation_strategy == "hybrid"
    tokens = h.current_tokens(track, now, config.token_bucket)
    health = h.current_health(track, now, config.health_score)
    state: AccountState = "ok"
    until: float | None = None
    detail: str | None = None
    if account.disabled:
        state = "disabled"
    elif account.needs_relogin:
        state = "needs_relogin"
        detail = account.relogin_reason
    elif track.cooldown is not None and track.cooldown.until > now:
        state = _COOLDOWN_STATE[track.cooldown.reason]
        until, detail = track.cooldown.until, track.cooldown.detail
        if hybrid:  # the bucket refills during the cooldown, but may still lag
            until = max(until, h.token_ready_at(track, until, config.token_bucket))
    elif hybrid and tokens < 1:
        state = "bucket_empty"
        until = h.token_ready_at(track, now, config.token_bucket)
    elif hybrid and health < config.health_score.min_usable:
        state = "low_health"
    counters = track.today if track.today and track.today.day == today else None
    return AccountStatus(
        account_id=account.id,
        label=account.label,
        state=state,
        until=until,
        health=health,
        tokens=tokens,
        max_tokens=config.token_bucket.max_tokens,
        requests_today=counters.requests if counters else 0,
        rate_limits_today=counters.rate_limits if counters else 0,
        last_used=track.last_used,
        detail=detail,
    )


# --- words and tables ---------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """``45s``, ``4m 10s``, ``5h 02m``, ``2d 03h`` (rounded up to whole seconds)."""
    s = max(0, int(-(-seconds // 1)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86_400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86_400}d {s % 86_400 // 3600:02d}h"


def format_moment(when: float, now: float, tz: dt.tzinfo = dt.UTC) -> str:
    """``12:03:10 UTC (in 50s)``; the date too when it is not today."""
    moment = dt.datetime.fromtimestamp(when, tz)
    same_day = moment.date() == dt.datetime.fromtimestamp(now, tz).date()
    text = moment.strftime("%H:%M:%S %Z" if same_day else "%Y-%m-%d %H:%M %Z")
    if when >= now:
        return f"{text} (in {format_duration(when - now)})"
    return f"{text} ({format_duration(now - when)} ago)"


def _ago(when: float | None, now: float) -> str:
    return "never" if when is None else f"{format_duration(now - when)} ago"


def _expiry(account: Account | None, now: float) -> str:
    if account is None:
        return "-"
    if account.access_token is None:
        return "no token"
    if account.expires_at is None:
        return "never"
    if account.expires_at <= now:
        return f"expired {format_duration(now - account.expires_at)} ago"
    return f"in {format_duration(account.expires_at - now)}"


TABLE_COLUMNS = (
    "label",
    "kind",
    "state",
    "health",
    "bucket",
    "requests today",
    "429s today",
    "last used",
    "token expiry",
)


def render_status_table(
    statuses: Iterable[AccountStatus],
    accounts: Sequence[Account],
    now: float,
    tz: dt.tzinfo = dt.UTC,
) -> str:
    """A plain-text table, one row per status (never a token)."""
    by_id = {a.id: a for a in accounts}
    rows = [TABLE_COLUMNS]
    for st in statuses:
        account = by_id.get(st.account_id)
        rows.append(
            (
                st.label,
                account.kind if account else "-",
                st.describe(now, tz),
                f"{st.health:.0f}",
                f"{int(st.tokens)}/{st.max_tokens}",
                str(st.requests_today),
                str(st.rate_limits_today),
                _ago(st.last_used, now),
                _expiry(account, now),
            )
        )
    if len(rows) == 1:
        return "no accounts; add one with `qwen-oauth login`"
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def unavailable_message(
    statuses: Sequence[AccountStatus],
    retry_at: float | None,
    now: float,
    tz: dt.tzinfo = dt.UTC,
    *,
    tried: Collection[str] = (),
) -> str:
    """The error text when no account can serve: each account's state, and when.

    ``tried`` are ids of accounts already tried (and failed) for this request.
    """
    if not statuses:
        return "No Qwen account is set up; add one with `qwen-oauth login`."
    parts = [
        f"{s.label}: {s.describe(now, tz)}"
        + (", already tried for this request" if s.account_id in tried else "")
        for s in statuses
    ]
    head = f"No Qwen account can take this request now ({'; '.join(parts)})."
    if retry_at is None:
        return head + " None will become usable by waiting; re-login or enable one."
    return head + f" Retry after {format_moment(retry_at, now, tz)}."
