"""The ``accounts`` table: rotation's view of each account, never a token.

:func:`status_table` is the one boundary the command calls. It uses the rotation
package's ``account_status`` / ``render_status_table`` with the tracker state file
(health, bucket, requests and 429s today, last used); when that package is not
importable it falls back to what the accounts file alone knows.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ValidationError

from qwen_oauth_mitm.accounts import Account, AccountsFile
from qwen_oauth_mitm.cli.common import duration
from qwen_oauth_mitm.config import Config, parse_timezone


def status_table(
    accounts: AccountsFile, config: Config, tracker_path: Path, now: float
) -> str:
    """The table for every account."""
    try:
        from qwen_oauth_mitm.rotation.ratelimit import quota_day
        from qwen_oauth_mitm.rotation.state import EMPTY_TRACK, TrackerState
        from qwen_oauth_mitm.rotation.status import account_status, render_status_table
    except ImportError:  # pragma: no cover - rotation ships with the package
        return fallback_table(accounts, now)
    tz = parse_timezone(config.quota_reset_timezone)
    tracker = _read_tracker(tracker_path, TrackerState)
    today = quota_day(now, tz)
    statuses = [
        account_status(
            a, tracker.accounts.get(a.id, EMPTY_TRACK), now, config, today=today
        )
        for a in accounts.accounts
    ]
    return render_status_table(statuses, accounts.accounts, now, tz)


def _read_tracker[T: BaseModel](path: Path, model: type[T]) -> T:
    """The tracker state, or an empty one; never modifies the file (read-only view)."""
    try:
        return model.model_validate_json(path.read_bytes())
    except (OSError, ValidationError, ValueError):
        return model()


def _state(account: Account) -> str:
    if account.disabled:
        return "disabled"
    if account.needs_relogin:
        return "needs re-login"
    return "ok"


def _expiry(account: Account, now: float) -> str:
    if account.access_token is None:
        return "no token"
    if account.expires_at is None:
        return "never"
    left = account.expires_at - now
    return f"in {duration(left)}" if left > 0 else f"expired {duration(-left)} ago"


def fallback_table(accounts: AccountsFile, now: float) -> str:
    """Label, kind, state and token expiry from the accounts file alone."""
    if not accounts.accounts:
        return "no accounts; add one with `qwen-oauth login`"
    head = (
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
    rows = [head] + [
        (a.label, a.kind, _state(a), "-", "-", "-", "-", "-", _expiry(a, now))
        for a in accounts.accounts
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)
