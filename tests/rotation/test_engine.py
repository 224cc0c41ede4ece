"""The rotation engine: strategies, exclusions, settlement, and what it reports."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from qwen_oauth_mitm.accounts import Account
from qwen_oauth_mitm.config import Config
from qwen_oauth_mitm.rotation import health as h
from qwen_oauth_mitm.rotation.engine import (
    FAILURES_BEFORE_COOLDOWN,
    AllUnavailable,
    Pick,
    Rotation,
)
from qwen_oauth_mitm.rotation.ratelimit import Verdict
from qwen_oauth_mitm.rotation.simulation import fake_account
from qwen_oauth_mitm.rotation.state import (
    AccountTrack,
    Cooldown,
    DayCounters,
    TrackerState,
)

T0 = dt.datetime(2026, 1, 5, 2, 0, tzinfo=dt.UTC).timestamp()  # 10:00 in Shanghai


def accounts(n: int = 3, **changes: Any) -> list[Account]:
    return [fake_account(f"acct_{i}", **changes) for i in range(n)]


def picked(result: Pick | AllUnavailable) -> Pick:
    assert isinstance(result, Pick), result
    return result


def unavailable(result: Pick | AllUnavailable) -> AllUnavailable:
    assert isinstance(result, AllUnavailable), result
    return result


def engine(state: TrackerState | None = None, pid: int = 0, **config: Any) -> Rotation:
    return Rotation(Config.model_validate(config), state, pid=pid)


def with_tracks(**tracks: AccountTrack) -> TrackerState:
    return TrackerState(accounts=tracks)


# --- hybrid -----------------------------------------------------------------------


def test_hybrid_picks_a_fresh_account_at_score_1000_then_the_freshest() -> None:
    rot, accts = engine(), accounts()
    first = picked(rot.pick(accts, T0))
    assert (first.account.id, first.reason, first.score) == ("acct_0", "score", 1000)
    # acct_0 lost a token and its freshness; the others are untouched.
    assert picked(rot.pick(accts, T0 + 1)).account.id == "acct_1"
    assert picked(rot.pick(accts, T0 + 2)).account.id == "acct_2"
    again = picked(rot.pick(accts, T0 + 3))
    assert again.account.id == "acct_0"
    # 140 + (49.3 / 50) x 500 + 3 s idle x 0.1
    assert again.score == pytest.approx(140 + 49.3 / 50 * 500 + 0.3)


def test_pid_offset_breaks_ties_differently_per_process() -> None:
    accts = accounts(4)
    assert picked(engine(pid=6).pick(accts, T0)).account.id == "acct_0"
    with_offset = engine(pid=6, pid_offset_enabled=True)
    assert picked(with_offset.pick(accts, T0)).account.id == "acct_2"


def test_health_below_min_usable_is_left_out_while_a_healthy_account_exists() -> None:
    # acct_0 would win on score (full bucket, long idle) but its health is 49.
    state = with_tracks(
        acct_0=AccountTrack(health=49.0, health_at=T0),
        acct_1=AccountTrack(tokens=5.0, tokens_at=T0, last_used=T0),
    )
    rot = engine(state)
    assert picked(rot.pick(accounts(2), T0)).account.id == "acct_1"


def test_when_health_alone_rules_out_everyone_the_healthiest_serves() -> None:
    state = with_tracks(
        acct_0=AccountTrack(health=20.0, health_at=T0),
        acct_1=AccountTrack(health=45.0, health_at=T0, tokens=2.0, tokens_at=T0),
        acct_2=AccountTrack(health=48.0, health_at=T0, tokens=0.5, tokens_at=T0),
    )
    pick = picked(engine(state).pick(accounts(), T0))
    # acct_2 is healthier but its bucket is empty: that exclusion is not softened.
    assert (pick.account.id, pick.reason) == ("acct_1", "healthiest")


def test_an_empty_bucket_excludes_and_says_when_a_token_is_back() -> None:
    state = with_tracks(
        acct_0=AccountTrack(tokens=0.5, tokens_at=T0),
        acct_1=AccountTrack(tokens=0.0, tokens_at=T0),
    )
    result = unavailable(engine(state).pick(accounts(2), T0))
    assert result.retry_at == pytest.approx(T0 + 5)  # half a token at 0.1/s
    assert [s.state for s in result.statuses] == ["bucket_empty", "bucket_empty"]
    # Whole seconds, rounded up: the moment carries a millisecond of slack.
    assert result.retry_after_seconds(T0) == 6


def test_a_cooling_account_in_hybrid_waits_for_its_bucket_too() -> None:
    cool = Cooldown(until=T0 + 10, reason="rate_limit")
    state = with_tracks(acct_0=AccountTrack(tokens=0.0, tokens_at=T0, cooldown=cool))
    result = unavailable(engine(state).pick(accounts(1), T0))
    assert result.retry_at == pytest.approx(T0 + 10)
    state = with_tracks(
        acct_0=AccountTrack(tokens=-0.0, tokens_at=T0 + 8, cooldown=cool)
    )
    assert unavailable(engine(state).pick(accounts(1), T0)).retry_at == pytest.approx(
        T0 + 18
    )


# --- health rules through the engine ----------------------------------------------


def health_of(rot: Rotation, account_id: str, now: float = T0) -> float:
    return next(
        s.health for s in rot.status(accounts(), now) if s.account_id == account_id
    )


def verdict(kind: Any, until: float | None = None) -> Verdict:
    return Verdict(kind, 429 if kind in ("quota", "rate_limit") else 500, until)


@pytest.mark.parametrize(
    ("settle", "health"),
    [
        (lambda r, p: r.record_success(p, T0), 71),
        (lambda r, p: r.record(p, verdict("rate_limit", T0 + 60), T0), 60),
        (lambda r, p: r.record(p, verdict("quota", T0 + 9000), T0), 60),
        (lambda r, p: r.record(p, verdict("account"), T0), 50),
        (lambda r, p: r.record(p, verdict("upstream"), T0), 70),  # not its fault
        (lambda r, p: r.record(p, verdict("client"), T0), 70),  # nor is a 400
        (lambda r, p: r.record(p, verdict("auth"), T0), 70),
    ],
)
def test_health_rules(settle: Any, health: float) -> None:
    rot = engine()
    settle(rot, picked(rot.pick(accounts(), T0)))
    assert health_of(rot, "acct_0") == health


def test_health_recovers_while_resting() -> None:
    rot = engine()
    pick = picked(rot.pick(accounts(), T0))
    rot.record(pick, verdict("rate_limit", T0 + 60), T0)
    assert health_of(rot, "acct_0", T0 + 3 * 3600) == pytest.approx(66)


# --- cooldowns ----------------------------------------------------------------------


def test_a_rate_limited_account_is_skipped_until_its_cooldown_ends() -> None:
    rot, accts = engine(), accounts(2)
    first = picked(rot.pick(accts, T0))
    rot.record_rate_limit(first, T0, until=T0 + 60, detail="429 Throttling")
    for t in (T0 + 1, T0 + 30, T0 + 59):
        assert picked(rot.pick(accts, t)).account.id == "acct_1"
    status = rot.status(accts, T0 + 1)[0]
    assert (status.state, status.until, status.detail) == (
        "rate_limited",
        T0 + 60,
        "429 Throttling",
    )
    assert status.rate_limits_today == 1
    assert rot.status(accts, T0 + 60)[0].state == "ok"


def test_all_limited_gives_the_earliest_moment_and_each_state() -> None:
    rot, accts = engine(), accounts(3)
    first, second, third = (picked(rot.pick(accts, T0)) for _ in range(3))
    rot.record_rate_limit(first, T0, until=T0 + 90)
    rot.record_rate_limit(second, T0, until=T0 + 40)
    rot.record_rate_limit(third, T0, until=T0 + 30000, quota=True)
    result = unavailable(rot.pick(accts, T0 + 1))
    assert result.retry_at == T0 + 40
    assert [s.state for s in result.statuses] == [
        "rate_limited",
        "rate_limited",
        "quota",
    ]
    message = result.message(T0 + 1)
    assert "0: rate-limited until 02:01:30 UTC (in 1m 29s)" in message
    assert "2: quota exhausted until" in message
    assert "Retry after 02:00:40 UTC (in 39s)" in message


def test_a_later_short_throttle_does_not_shorten_a_quota_cooldown() -> None:
    rot, accts = engine(), accounts(1)
    first = picked(rot.pick(accts, T0))
    rot.record_rate_limit(first, T0, until=T0 + 50000, quota=True)
    rot.record_rate_limit(first, T0 + 1, until=T0 + 61)  # an in-flight answer
    status = rot.status(accts, T0 + 100)[0]
    assert (status.state, status.until) == ("quota", T0 + 50000)


def test_consecutive_failures_cool_an_account_down_doubling_each_time() -> None:
    rot, accts = engine(), accounts(1)
    for n in range(1, FAILURES_BEFORE_COOLDOWN + 2):
        now = T0 + 1000 * n
        pick = picked(rot.pick(accts, now))
        rot.record_failure(pick, now, account_fault=False, detail="502")
        status = rot.status(accts, now)[0]
        if n < FAILURES_BEFORE_COOLDOWN:
            assert status.state == "ok"
        else:
            assert status.state == "cooling"
            assert status.until == now + 60 * 2 ** (n - FAILURES_BEFORE_COOLDOWN)
    pick = picked(rot.pick(accts, T0 + 10_000))
    rot.record_success(pick, T0 + 10_000)
    assert rot.track("acct_0").consecutive_failures == 0


def test_a_success_ends_a_failure_cooldown_but_not_a_rate_limit() -> None:
    rot, accts = engine(), accounts(1)
    picks = [picked(rot.pick(accts, T0)) for _ in range(4)]
    for p in picks[:3]:
        rot.record_failure(p, T0, account_fault=False)
    assert rot.status(accts, T0)[0].state == "cooling"
    rot.record_success(picks[3], T0)  # an answer that was in flight
    assert rot.status(accts, T0)[0].state == "ok"
    late = picked(rot.pick(accts, T0))
    rot.record_rate_limit(late, T0, until=T0 + 60)
    rot.record_success(late, T0)
    assert rot.status(accts, T0)[0].state == "rate_limited"


def test_disabled_and_relogin_accounts_are_never_picked_and_never_awaited() -> None:
    accts = [
        fake_account("acct_0", disabled=True),
        fake_account("acct_1", needs_relogin=True, relogin_reason="invalid_grant"),
    ]
    for strategy in ("hybrid", "round-robin", "sequential"):
        result = unavailable(engine(rotation_strategy=strategy).pick(accts, T0))
        assert result.retry_at is None
        assert result.retry_after_seconds(T0) is None
        assert [s.state for s in result.statuses] == ["disabled", "needs_relogin"]
        assert "None will become usable by waiting" in result.message(T0)
    assert unavailable(engine().pick([], T0)).statuses == ()


def test_excluded_accounts_are_not_picked_nor_awaited() -> None:
    rot, accts = engine(), accounts(2)
    first = picked(rot.pick(accts, T0))
    rot.record_rate_limit(first, T0, until=T0 + 30)
    result = unavailable(rot.pick(accts, T0, exclude={"acct_1"}))
    assert result.retry_at == T0 + 30
    result = unavailable(rot.pick(accts, T0, exclude={"acct_0", "acct_1"}))
    assert result.retry_at is None
    assert "already tried for this request" in result.message(T0)


# --- round-robin and sequential -----------------------------------------------------


def test_round_robin_cycles_and_skips_a_cooling_account() -> None:
    rot, accts = engine(rotation_strategy="round-robin"), accounts(3)
    order = [picked(rot.pick(accts, T0 + i)).account.id for i in range(4)]
    assert order == ["acct_0", "acct_1", "acct_2", "acct_0"]
    p = picked(rot.pick(accts, T0 + 5))
    rot.record_rate_limit(p, T0 + 5, until=T0 + 100)  # acct_1
    order = [picked(rot.pick(accts, T0 + 6 + i)).account.id for i in range(3)]
    assert order == ["acct_2", "acct_0", "acct_2"]


def test_round_robin_follows_ids_not_positions_across_a_restart() -> None:
    rot, accts = engine(rotation_strategy="round-robin"), accounts(3)
    picked(rot.pick(accts, T0))
    picked(rot.pick(accts, T0))  # acct_1
    reloaded = engine(rot.snapshot(), rotation_strategy="round-robin")
    # acct_0 was removed: the next after acct_1 is still acct_2.
    assert picked(reloaded.pick(accts[1:], T0)).account.id == "acct_2"


def test_round_robin_and_sequential_start_at_the_pid_offset() -> None:
    for strategy in ("round-robin", "sequential"):
        rot = engine(pid=5, pid_offset_enabled=True, rotation_strategy=strategy)
        assert picked(rot.pick(accounts(3), T0)).account.id == "acct_2"
        nxt = "acct_0" if strategy == "round-robin" else "acct_2"
        assert picked(rot.pick(accounts(3), T0)).account.id == nxt


def test_sequential_stays_until_a_limit_or_failure_and_does_not_go_back() -> None:
    rot, accts = engine(rotation_strategy="sequential"), accounts(3)
    picks = [picked(rot.pick(accts, T0 + i)) for i in range(5)]
    assert {p.account.id for p in picks} == {"acct_0"}
    rot.record_rate_limit(picks[-1], T0 + 5, until=T0 + 10)
    assert picked(rot.pick(accts, T0 + 6)).account.id == "acct_1"
    # acct_0 is usable again, but sequential stays where it is.
    assert picked(rot.pick(accts, T0 + 20)).account.id == "acct_1"
    failing = picked(rot.pick(accts, T0 + 21))
    rot.record_failure(failing, T0 + 21, account_fault=False)  # a 5xx: no cooldown
    assert picked(rot.pick(accts, T0 + 22)).account.id == "acct_2"
    assert picked(rot.pick(accts, T0 + 23)).account.id == "acct_2"


def test_non_hybrid_strategies_never_wait_for_the_bucket() -> None:
    for strategy in ("round-robin", "sequential"):
        rot, accts = engine(rotation_strategy=strategy), accounts(1)
        for i in range(60):
            picked(rot.pick(accts, T0 + i * 0.01))
        assert rot.status(accts, T0 + 1)[0].tokens < 1


# --- affinity -----------------------------------------------------------------------


def test_a_conversation_returns_to_its_account_while_usable() -> None:
    rot, accts = engine(), accounts(3)
    first = picked(rot.pick(accts, T0, conversation_key="c1"))
    assert first.account.id == "acct_0"
    again = picked(rot.pick(accts, T0 + 1, conversation_key="c1"))
    assert (again.account.id, again.reason) == ("acct_0", "affinity")
    other = picked(rot.pick(accts, T0 + 2, conversation_key="c2"))
    assert other.account.id == "acct_1"
    rot.record_rate_limit(again, T0 + 3, until=T0 + 60)
    moved = picked(rot.pick(accts, T0 + 4, conversation_key="c1"))
    assert (moved.account.id, moved.reason) == ("acct_2", "score")
    back = picked(rot.pick(accts, T0 + 100, conversation_key="c1"))
    assert (back.account.id, back.reason) == ("acct_2", "affinity")


def test_affinity_can_be_turned_off_and_is_hybrid_only() -> None:
    for config in (
        {"conversation_affinity": False},
        {"rotation_strategy": "round-robin"},
    ):
        rot, accts = engine(**config), accounts(3)
        ids = [
            picked(rot.pick(accts, T0 + i, conversation_key="c1")).account.id
            for i in range(3)
        ]
        assert ids == ["acct_0", "acct_1", "acct_2"]
        assert rot.snapshot().affinity == {}


# --- release ------------------------------------------------------------------------


def test_release_refunds_the_token_the_count_and_last_used() -> None:
    rot, accts = engine(), accounts(1)
    earlier = picked(rot.pick(accts, T0))
    rot.record_success(earlier, T0)
    pick = picked(rot.pick(accts, T0 + 10))
    before = rot.status(accts, T0 + 10)[0]
    assert before.requests_today == 2
    rot.release(pick, T0 + 10)
    after = rot.status(accts, T0 + 10)[0]
    assert after.requests_today == 1
    assert after.tokens == pytest.approx(before.tokens + 1)
    assert after.last_used == T0


def test_release_never_overfills_and_keeps_a_later_pick() -> None:
    rot, accts = engine(), accounts(1)
    first = picked(rot.pick(accts, T0))
    second = picked(rot.pick(accts, T0 + 1))
    rot.release(first, T0 + 600)  # refilled meanwhile
    status = rot.status(accts, T0 + 600)[0]
    assert status.tokens == 50
    assert status.last_used == second.at


def test_auth_failure_refunds_and_keeps_sequential_on_the_account() -> None:
    rot, accts = engine(rotation_strategy="sequential"), accounts(2)
    pick = picked(rot.pick(accts, T0))
    rot.record(pick, verdict("auth"), T0)
    assert rot.status(accts, T0)[0].requests_today == 0
    assert picked(rot.pick(accts, T0)).account.id == "acct_0"


def test_release_of_a_forgotten_account_is_harmless() -> None:
    rot, accts = engine(), accounts(1)
    pick = picked(rot.pick(accts, T0))
    rot.prune([])
    rot.release(pick, T0)
    assert rot.snapshot().accounts == {}


# --- counters, pruning, reconfiguring, waiting -------------------------------------


def test_day_counters_restart_at_midnight_in_the_quota_zone() -> None:
    rot, accts = engine(), accounts(1)
    midnight = dt.datetime(2026, 1, 5, 16, 0, tzinfo=dt.UTC).timestamp()
    for t in (midnight - 20, midnight - 10):
        p = picked(rot.pick(accts, t))
        rot.record_rate_limit(p, t, until=t)
    assert rot.status(accts, midnight - 1)[0].requests_today == 2
    assert rot.status(accts, midnight - 1)[0].rate_limits_today == 2
    assert rot.status(accts, midnight)[0].requests_today == 0
    picked(rot.pick(accts, midnight + 5))
    assert rot.status(accts, midnight + 6)[0].requests_today == 1
    assert rot.status(accts, midnight + 6)[0].rate_limits_today == 0


def test_prune_forgets_removed_accounts_and_their_conversations() -> None:
    rot, accts = engine(), accounts(2)
    picked(rot.pick(accts, T0, conversation_key="c1"))
    picked(rot.pick(accts, T0, conversation_key="c2"))
    revision = rot.revision
    assert rot.prune(accts[1:]) == 1
    snap = rot.snapshot()
    assert set(snap.accounts) == {"acct_1"}
    assert list(snap.affinity.values()) == ["acct_1"]
    assert rot.revision > revision
    assert rot.prune(accts[1:]) == 0


def test_reconfigure_keeps_what_was_learned() -> None:
    rot, accts = engine(), accounts(2)
    p = picked(rot.pick(accts, T0))
    rot.record_rate_limit(p, T0, until=T0 + 60)
    rot.reconfigure(Config(rotation_strategy="round-robin"))
    assert rot.config.rotation_strategy == "round-robin"
    assert picked(rot.pick(accts, T0 + 1)).account.id == "acct_1"
    assert rot.status(accts, T0 + 1)[0].state == "rate_limited"


def test_every_change_moves_the_revision() -> None:
    rot, accts = engine(), accounts(1)
    seen = [rot.revision]
    p = picked(rot.pick(accts, T0))
    seen.append(rot.revision)
    rot.record_success(p, T0)
    seen.append(rot.revision)
    rot.release(p, T0)
    seen.append(rot.revision)
    assert seen == sorted(set(seen))


@pytest.mark.parametrize(
    "today",
    [
        None,
        DayCounters(day="2026-01-04", requests=7, rate_limits=2),  # another day
        DayCounters(day="2026-01-05", requests=7, rate_limits=2),  # this day
    ],
)
def test_a_pick_stores_what_the_step_by_step_updates_did(
    today: DayCounters | None,
) -> None:
    # The pick writes the bucket, the freshness and the day's count in one copy
    # of the track; it must equal the three updates made one after another.
    before = AccountTrack(
        health=80.0,
        health_at=T0 - 50,
        tokens=2.5,
        tokens_at=T0 - 30,
        last_used=T0 - 30,
        consecutive_failures=1,
        today=today,
    )
    rot, accts = engine(with_tracks(acct_0=before)), accounts(1)
    bucket = rot.config.token_bucket
    pick = picked(rot.pick(accts, T0))
    tokens = h.current_tokens(before, T0, bucket)
    want = h.set_tokens(before, T0, tokens - 1, bucket)
    counted = (
        today
        if today is not None and today.day == "2026-01-05"
        else DayCounters(day="2026-01-05")
    )
    want = want.model_copy(
        update={
            "last_used": T0,
            "today": counted.model_copy(update={"requests": counted.requests + 1}),
        }
    )
    assert rot.track("acct_0") == want
    assert (pick.token_taken, pick.previous_last_used, pick.day) == (
        1.0,
        T0 - 30,
        "2026-01-05",
    )
