"""A short simulated run of every strategy; its invariant checks must hold, and
must be able to fail."""

from __future__ import annotations

import datetime as dt

import pytest

from qwen_oauth_mitm.config import Config
from qwen_oauth_mitm.rotation import select
from qwen_oauth_mitm.rotation import simulation as sim
from qwen_oauth_mitm.rotation.simulation import (
    FakeUpstream,
    SimResult,
    fake_account,
    markdown_table,
    simulate,
)

STRATEGIES = (
    ("hybrid", Config()),
    ("hybrid, no affinity", Config(conversation_affinity=False)),
    ("round-robin", Config(rotation_strategy="round-robin")),
    ("sequential", Config(rotation_strategy="sequential")),
    ("hybrid, wait 20 s", Config(max_rate_limit_wait_seconds=20)),
)
HOURS = 5
UNUSABLE = (
    fake_account("acct_off", disabled=True),
    fake_account("acct_dead", needs_relogin=True),
)


@pytest.fixture(scope="module")
def results() -> list[SimResult]:
    # Five hours at 8 agents: the daily quota runs out, so every path is taken.
    return simulate(STRATEGIES, [1, 8], duration=HOURS * 3600, extra_accounts=UNUSABLE)


def test_every_request_is_served_or_failed(results: list[SimResult]) -> None:
    for r in results:
        in_flight = r.agents  # at most one unfinished request per agent
        assert r.offered - in_flight <= r.served + r.failed <= r.offered
        assert r.served <= 3 * 2000  # the upstream's daily quota for 3 accounts


def test_a_light_load_is_served_without_failures(results: list[SimResult]) -> None:
    light = [r for r in results if r.agents == 1]
    assert all(r.failed == 0 and r.served > 500 and r.waited == 0 for r in light)


def test_a_heavy_load_exhausts_the_quota_and_then_fails_fast(
    results: list[SimResult],
) -> None:
    heavy = {r.strategy: r for r in results if r.agents == 8}
    for name in ("round-robin", "sequential"):
        r = heavy[name]
        assert r.served == 6000
        assert r.quota_429s == 3  # one quota answer per account, then it cools
        assert r.failed > 0
    assert max(r.wait_max for r in heavy.values()) <= 300
    assert heavy["hybrid, wait 20 s"].wait_max <= 20


def test_hybrid_never_sends_more_than_its_buckets_allow(
    results: list[SimResult],
) -> None:
    # 3 full buckets of 50, then 6 a minute each: far below 60 a minute.
    allowed = 3 * 50 + 3 * 6 * 60 * HOURS
    for r in results:
        if r.strategy.startswith("hybrid"):
            assert r.served + r.upstream_429s <= allowed
            assert r.upstream_429s == 0


def test_affinity_keeps_conversations_on_one_account(results: list[SimResult]) -> None:
    by_name = {(r.strategy, r.agents): r for r in results}

    def share(name: str) -> float:
        r = by_name[(name, 1)]
        return r.same_account / r.follow_ups

    assert share("hybrid") > 0.9
    assert share("sequential") > 0.9
    assert share("round-robin") < 0.1
    assert share("hybrid, no affinity") < 0.5


def test_the_table_has_a_row_per_run(results: list[SimResult]) -> None:
    table = markdown_table(results)
    assert len(table.splitlines()) == 2 + len(results)
    assert "| hybrid | 1 |" in table


def test_the_pick_check_catches_a_strategy_that_picks_a_disabled_account(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = Config(rotation_strategy="round-robin")
    s = sim.Simulation(
        config,
        sim.Load(1),
        [fake_account("acct_off", disabled=True), fake_account("acct_0")],
        start=1_767_571_200.0,
    )
    monkeypatch.setattr(select, "usable", lambda *_: True)
    with pytest.raises(AssertionError, match="acct_off, which the rules exclude"):
        s.run(3600)


def test_the_failure_check_catches_a_caller_that_gives_up_too_early(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sim, "wait_before_retry", lambda *_, **__: None)
    with pytest.raises(AssertionError, match="usable within the wait limit"):
        simulate([("hybrid", Config())], [8], duration=2 * 3600)


def test_fake_upstream_enforces_the_minute_and_the_day() -> None:
    up = FakeUpstream(dt.UTC, per_minute=3, per_day=5)
    t = 1_767_571_200.0
    assert [up.answer("a", t + i)[0] for i in range(4)] == [200, 200, 200, 429]
    assert b"throttling" in up.answer("a", t + 4)[1]
    assert up.answer("b", t)[0] == 200  # per account
    assert [up.answer("a", t + 61 + i)[0] for i in range(3)] == [200, 200, 429]
    assert b"insufficient_quota" in up.answer("a", t + 200)[1]
    assert up.answer("a", t + 86_400)[0] == 200  # the next day
