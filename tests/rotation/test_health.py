"""Health, bucket and score arithmetic, with hand-computed numbers."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from qwen_oauth_mitm.config import HealthScoreConfig, TokenBucketConfig
from qwen_oauth_mitm.rotation import health as h
from qwen_oauth_mitm.rotation.state import EMPTY_TRACK, AccountTrack

HC = HealthScoreConfig()
BC = TokenBucketConfig()
T0 = 1_700_000_000.0


def test_a_fresh_account_scores_1000() -> None:
    # 70 x 2 + (50 / 50) x 100 x 5 + min(never used = 3600, 3600) x 0.1
    health, tokens, score = h.assess(EMPTY_TRACK, T0, h.Rates.of(HC, BC))
    assert (health, tokens) == (70.0, 50.0)
    assert score == pytest.approx(140 + 500 + 360)
    assert h.idle_seconds(EMPTY_TRACK, T0) == 3600


@pytest.mark.parametrize(
    ("health", "tokens", "idle", "expected"),
    [
        (70, 50, 3600, 1000.0),
        (85, 20, 120, 170 + 200 + 12),
        (100, 50, 7200, 200 + 500 + 360),  # freshness is capped at one hour
        (50, 0, 0, 100.0),
        (0, 25, 30, 0 + 250 + 3),
    ],
)
def test_hybrid_score_by_hand(
    health: float, tokens: float, idle: float, expected: float
) -> None:
    assert h.hybrid_score(health, tokens, 50, idle) == pytest.approx(expected)


def test_health_rewards_and_penalties_are_clamped() -> None:
    track = h.adjust_health(EMPTY_TRACK, T0, HC.success_reward, HC)
    assert track.health == 71
    track = h.adjust_health(track, T0, HC.rate_limit_penalty, HC)
    assert track.health == 61
    track = h.adjust_health(track, T0, HC.failure_penalty, HC)
    assert track.health == 41
    for _ in range(5):
        track = h.adjust_health(track, T0, HC.failure_penalty, HC)
    assert track.health == 0
    top = AccountTrack(health=100.0, health_at=T0)
    assert h.adjust_health(top, T0, 1, HC).health == 100


def test_recovery_is_two_points_an_hour_of_rest() -> None:
    track = AccountTrack(health=40.0, health_at=T0)
    assert h.current_health(track, T0 + 1800, HC) == pytest.approx(41)
    assert h.current_health(track, T0 + 5 * 3600, HC) == pytest.approx(50)
    assert h.current_health(track, T0 + 100 * 3600, HC) == 100  # clamped


def test_an_event_folds_the_recovery_in_and_restarts_the_rest() -> None:
    track = AccountTrack(health=40.0, health_at=T0)
    track = h.adjust_health(track, T0 + 3 * 3600, -10, HC)  # 46 - 10
    assert track.health == pytest.approx(36)
    assert track.health_at == T0 + 3 * 3600
    assert h.current_health(track, T0 + 4 * 3600, HC) == pytest.approx(38)


def test_a_clock_stepping_back_takes_nothing_away() -> None:
    track = AccountTrack(health=40.0, health_at=T0, tokens=10.0, tokens_at=T0)
    assert h.current_health(track, T0 - 3600, HC) == 40
    assert h.current_tokens(track, T0 - 3600, BC) == 10


def test_bucket_regenerates_six_a_minute_up_to_the_max() -> None:
    track = h.set_tokens(EMPTY_TRACK, T0, 0, BC)
    clock = T0
    seen = []
    for step in (10, 50, 240, 3600):  # fake clock: advance and read
        clock += step
        seen.append(h.current_tokens(track, clock, BC))
    assert seen == pytest.approx([1, 6, 30, 50])


def test_set_tokens_clamps_to_the_bucket() -> None:
    assert h.set_tokens(EMPTY_TRACK, T0, -3, BC).tokens == 0
    assert h.set_tokens(EMPTY_TRACK, T0, 99, BC).tokens == 50
    small = TokenBucketConfig(max_tokens=5)
    assert h.current_tokens(AccountTrack(tokens=40, tokens_at=T0), T0, small) == 5


def test_token_ready_at() -> None:
    assert h.token_ready_at(EMPTY_TRACK, T0, BC) == T0
    half = AccountTrack(tokens=0.5, tokens_at=T0)
    assert h.token_ready_at(half, T0, BC) == pytest.approx(T0 + 5)
    empty = AccountTrack(tokens=0.0, tokens_at=T0)
    assert h.token_ready_at(empty, T0 + 4, BC) == pytest.approx(T0 + 10)


maybe_time = st.none() | st.floats(T0 - 1e5, T0 + 1e5)


@given(
    health=st.none() | st.floats(0, 100),
    health_at=maybe_time,
    tokens=st.none() | st.floats(0, 80),
    tokens_at=maybe_time,
    last_used=maybe_time,
    now=st.floats(T0 - 1e5, T0 + 2e5),
    max_tokens=st.integers(1, 200),
    regen=st.floats(0.01, 100),
    recovery=st.floats(0, 50),
)
def test_assess_matches_the_readable_functions(
    health: float | None,
    health_at: float | None,
    tokens: float | None,
    tokens_at: float | None,
    last_used: float | None,
    now: float,
    max_tokens: int,
    regen: float,
    recovery: float,
) -> None:
    hc = HealthScoreConfig(recovery_rate_per_hour=recovery)
    bc = TokenBucketConfig(max_tokens=max_tokens, regeneration_rate_per_minute=regen)
    track = AccountTrack(
        health=health,
        health_at=health_at if health is not None else None,
        tokens=tokens,
        tokens_at=tokens_at if tokens is not None else None,
        last_used=last_used,
    )
    got = h.assess(track, now, h.Rates.of(hc, bc))
    want_health = h.current_health(track, now, hc)
    want_tokens = h.current_tokens(track, now, bc)
    want_score = h.hybrid_score(
        want_health, want_tokens, max_tokens, h.idle_seconds(track, now)
    )
    assert got == pytest.approx((want_health, want_tokens, want_score))
    assert 0 <= got[1] <= max_tokens


@given(
    now=st.floats(min_value=1.6e9, max_value=2.1e9),
    tokens=st.floats(min_value=0.0, max_value=0.999),
    ago=st.floats(min_value=0.0, max_value=5.0),
    rate=st.floats(min_value=0.01, max_value=6000.0),
)
def test_the_bucket_holds_a_whole_token_at_the_ready_moment(
    now: float, tokens: float, ago: float, rate: float
) -> None:
    # Epoch-scale float rounding must not leave it a hair short: a caller that
    # waits until the returned moment would otherwise wait ~0 s forever.
    cfg = TokenBucketConfig(max_tokens=50, regeneration_rate_per_minute=rate)
    track = h.set_tokens(EMPTY_TRACK, now - ago, tokens, cfg)
    ready = h.token_ready_at(track, now, cfg)
    assert ready >= now
    assert h.current_tokens(track, ready, cfg) >= 1.0


def assess_with_min_max(
    track: AccountTrack, now: float, r: h.Rates
) -> tuple[float, float, float]:
    """:func:`h.assess` as it was written with ``min``/``max``: the reference for
    the comparisons that replaced them."""
    health = track.health
    if health is None:
        health = r.initial
    elif track.health_at is not None and now > track.health_at:
        health = min(
            h.HEALTH_MAX, health + r.recovery_per_second * (now - track.health_at)
        )
    tokens = track.tokens
    if tokens is None:
        tokens = r.max_tokens
    else:
        if track.tokens_at is not None and now > track.tokens_at:
            tokens += r.regen_per_second * (now - track.tokens_at)
        tokens = min(tokens, r.max_tokens)
    used = track.last_used
    idle = h.FRESHNESS_CAP_SECONDS if used is None else max(0.0, now - used)
    freshness = min(idle, h.FRESHNESS_CAP_SECONDS) * 0.1
    return health, tokens, health * 2 + tokens / r.max_tokens * 500 + freshness


any_time = st.floats(allow_nan=True, allow_infinity=True)
edgy_time = (
    st.sampled_from([T0, T0 - 3600, T0 + 3600, -0.0, 0.0, math.inf, -math.inf])
    | any_time
)


# 0 recovery x infinite rest is NaN health, which min(100, NaN) turns into 100.
@example(
    health=50.0,
    health_at=T0,
    tokens=None,
    tokens_at=None,
    last_used=None,
    now=math.inf,
    rates=h.Rates(70.0, 0.0, 50.0, 1.0),
)
@given(
    health=st.none() | st.floats(0, 100),
    health_at=st.none() | edgy_time,
    tokens=st.none() | st.floats(0, allow_infinity=True),
    tokens_at=st.none() | edgy_time,
    last_used=st.none() | edgy_time,
    now=edgy_time,
    rates=st.builds(
        h.Rates,
        st.floats(0, 100),
        st.floats(0, 1e3),
        st.integers(1, 200).map(float),
        st.floats(1e-4, 1e3),
    ),
)
def test_assess_equals_the_min_max_version_bit_for_bit(
    health: float | None,
    health_at: float | None,
    tokens: float | None,
    tokens_at: float | None,
    last_used: float | None,
    now: float,
    rates: h.Rates,
) -> None:
    track = AccountTrack(
        health=health,
        health_at=health_at,
        tokens=tokens,
        tokens_at=tokens_at,
        last_used=last_used,
    )
    # repr tells NaN from NaN and -0.0 from 0.0, which == would not.
    got = h.assess(track, now, rates)
    assert repr(got) == repr(assess_with_min_max(track, now, rates))
