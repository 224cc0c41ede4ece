"""Account states in words and the accounts table."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import SecretStr

from qwen_oauth_mitm.config import Config, parse_timezone
from qwen_oauth_mitm.rotation.engine import Pick, Rotation
from qwen_oauth_mitm.rotation.simulation import fake_account
from qwen_oauth_mitm.rotation.status import (
    TABLE_COLUMNS,
    AccountStatus,
    format_duration,
    format_moment,
    render_status_table,
    unavailable_message,
)

NOW = dt.datetime(2026, 1, 5, 12, 0, tzinfo=dt.UTC).timestamp()


def status(state: str, until: float | None = None) -> AccountStatus:
    return AccountStatus(
        account_id="acct_a",
        label="work",
        state=state,  # type: ignore[arg-type]
        until=until,
        health=70.0,
        tokens=50.0,
        max_tokens=50,
        requests_today=0,
        rate_limits_today=0,
        last_used=None,
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.2, "1s"),  # rounded up: never "retry in 0s"
        (59, "59s"),
        (60, "1m 00s"),
        (250, "4m 10s"),
        (3600 * 5 + 120, "5h 02m"),
        (86_400 * 2 + 3 * 3600, "2d 03h"),
        (-5, "0s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_moment() -> None:
    assert format_moment(NOW + 50, NOW) == "12:00:50 UTC (in 50s)"
    assert format_moment(NOW - 90, NOW) == "11:58:30 UTC (1m 30s ago)"
    assert format_moment(NOW + 86_400, NOW) == "2026-01-06 12:00 UTC (in 1d 00h)"
    shanghai = parse_timezone("Asia/Shanghai")
    assert format_moment(NOW + 50, NOW, shanghai) == "20:00:50 CST (in 50s)"
    # 15:59 UTC is 23:59 in Shanghai: a moment past its midnight shows the date.
    late = NOW + 4 * 3600 - 60
    assert (
        format_moment(late + 120, late, shanghai) == "2026-01-06 00:01 CST (in 2m 00s)"
    )


@pytest.mark.parametrize(
    ("state", "until", "text"),
    [
        ("ok", None, "ok"),
        ("disabled", None, "disabled"),
        ("needs_relogin", None, "needs re-login"),
        ("low_health", None, "low health (used only when no healthier one can be)"),
        ("rate_limited", NOW + 30, "rate-limited until 12:00:30 UTC (in 30s)"),
        ("quota", NOW + 7200, "quota exhausted until 14:00:00 UTC (in 2h 00m)"),
        ("cooling", NOW + 60, "cooling after failures until 12:01:00 UTC (in 1m 00s)"),
        ("bucket_empty", NOW + 4, "bucket empty until 12:00:04 UTC (in 4s)"),
    ],
)
def test_describe(state: str, until: float | None, text: str) -> None:
    st = status(state, until)
    assert st.describe(NOW) == text
    assert st.usable == (state in ("ok", "low_health"))


def test_the_table_shows_every_column_and_never_a_token() -> None:
    accounts = [
        fake_account("acct_work", label="work", expires_at=NOW + 5 * 3600),
        fake_account(
            "acct_home",
            label="home",
            expires_at=NOW - 60,
            refresh_token=SecretStr("rt-very-secret-refresh"),
        ),
        fake_account("acct_key", label="key", kind="key", expires_at=None),
        fake_account("acct_off", label="off", access_token=None, disabled=True),
    ]
    rot = Rotation(Config())
    pick = rot.pick(accounts, NOW - 5)
    assert isinstance(pick, Pick)
    rot.record_rate_limit(pick, NOW - 5, until=NOW + 30, detail="429 Throttling")
    table = render_status_table(rot.status(accounts, NOW), accounts, NOW)
    lines = table.splitlines()
    assert lines[0].split("  ")[0] == "label"
    for column in TABLE_COLUMNS:
        assert column in lines[0]
    assert set(lines[1]) <= {"-", " "}
    work = lines[2]
    assert work.startswith("work ")
    assert "rate-limited until 12:00:30 UTC (in 30s)" in work
    assert " 60 " in work  # health after one 429
    assert "49/50" in work  # 49.5 tokens: whole ones shown
    assert "5s ago" in work
    assert "in 5h 00m" in work
    assert "expired 1m 00s ago" in lines[3]
    assert "never" in lines[4]  # a key that does not expire
    assert "disabled" in lines[5]
    assert "no token" in lines[5]
    assert "sim-token" not in table
    assert "very-secret" not in table
    # Columns line up: every row has the two-space gutter where the header does.
    starts = [lines[0].index(c) for c in TABLE_COLUMNS]
    assert starts == sorted(starts)
    for row in lines[1:]:
        assert all(row[s - 2 : s] == "  " for s in starts[1:]), row


def test_the_table_without_accounts_says_how_to_add_one() -> None:
    assert "qwen-oauth login" in render_status_table([], [], NOW)


def test_unavailable_message() -> None:
    statuses = [status("rate_limited", NOW + 30), status("needs_relogin")]
    text = unavailable_message(statuses, NOW + 30, NOW)
    assert text == (
        "No Qwen account can take this request now (work: rate-limited until "
        "12:00:30 UTC (in 30s); work: needs re-login). "
        "Retry after 12:00:30 UTC (in 30s)."
    )
    assert "qwen-oauth login" in unavailable_message([], None, NOW)
