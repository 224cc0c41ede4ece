"""The ``accounts`` table: rotation's view of each account, never a token.

The tracker state file is read here as a read-only view: a missing or corrupt file
shows fresh counters, and only the proxy (through ``rotation.persist``) ever moves a
corrupt file aside.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from qwen_oauth_mitm.accounts import AccountsFile
from qwen_oauth_mitm.config import Config, parse_timezone
from qwen_oauth_mitm.rotation.ratelimit import quota_day
from qwen_oauth_mitm.rotation.state import EMPTY_TRACK, TrackerState
from qwen_oauth_mitm.rotation.status import account_status, render_status_table


def status_table(
    accounts: AccountsFile, config: Config, tracker_path: Path, now: float
) -> str:
    """The table for every account."""
    if not accounts.accounts:
        return "no accounts; add one with `qwen-oauth login`"
    tz = parse_timezone(config.quota_reset_timezone)
    tracker = _read_tracker(tracker_path)
    today = quota_day(now, tz)
    statuses = [
        account_status(
            a, tracker.accounts.get(a.id, EMPTY_TRACK), now, config, today=today
        )
        for a in accounts.accounts
    ]
    return render_status_table(statuses, accounts.accounts, now, tz)


def _read_tracker(path: Path) -> TrackerState:
    try:
        return TrackerState.model_validate_json(path.read_bytes())
    except (OSError, ValidationError, ValueError):
        return TrackerState()
