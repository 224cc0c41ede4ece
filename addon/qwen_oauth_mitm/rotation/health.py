"""Health score, token bucket and the hybrid score: the arithmetic of rotation.

Pure; no I/O, no clock: every function takes ``now`` (seconds since the epoch).
Stored values are "value at a moment"; these functions compute the value for
``now`` from the elapsed time, so recovery and regeneration are exact however
long ago the last event was (a state reloaded after a night's rest included). A
clock that steps backwards never takes health or tokens away: elapsed time is
floored at zero.

The hybrid score is the reference README's formula::

    health * 2 + (tokens / max_tokens) * 100 * 5 + min(idle seconds, 3600) * 0.1

An account never used counts as idle for the full hour (it is the freshest an
account can be), so a fresh account scores 70*2 + 500 + 360 = 1000.
"""

from __future__ import annotations

from dataclasses import dataclass

from qwen_oauth_mitm.config import HealthScoreConfig, TokenBucketConfig
from qwen_oauth_mitm.rotation.state import AccountTrack

HEALTH_MIN = 0.0
HEALTH_MAX = 100.0
FRESHNESS_CAP_SECONDS = 3600.0
HOUR = 3600.0
MINUTE = 60.0


def _elapsed(since: float | None, now: float) -> float:
    return 0.0 if since is None else max(0.0, now - since)


def _clamp(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))


# --- health -------------------------------------------------------------------------


def current_health(track: AccountTrack, now: float, cfg: HealthScoreConfig) -> float:
    """Health at ``now``: the stored score plus passive recovery since it was set."""
    if track.health is None:
        return float(cfg.initial)
    recovered = cfg.recovery_rate_per_hour * _elapsed(track.health_at, now) / HOUR
    return _clamp(track.health + recovered, HEALTH_MIN, HEALTH_MAX)


def adjust_health(
    track: AccountTrack, now: float, delta: float, cfg: HealthScoreConfig
) -> AccountTrack:
    """Add ``delta`` (a reward or a negative penalty) to the health at ``now``.

    The recovery earned so far is folded into the stored value, and the rest
    period starts again at ``now``.
    """
    health = _clamp(current_health(track, now, cfg) + delta, HEALTH_MIN, HEALTH_MAX)
    return track.model_copy(update={"health": health, "health_at": now})


# --- token bucket -------------------------------------------------------------------


def current_tokens(track: AccountTrack, now: float, cfg: TokenBucketConfig) -> float:
    """Tokens in the bucket at ``now``, within [0, max_tokens]."""
    top = float(cfg.max_tokens)
    if track.tokens is None:
        return top
    regained = (
        cfg.regeneration_rate_per_minute * _elapsed(track.tokens_at, now) / MINUTE
    )
    return _clamp(track.tokens + regained, 0.0, top)


def set_tokens(
    track: AccountTrack, now: float, tokens: float, cfg: TokenBucketConfig
) -> AccountTrack:
    """Store ``tokens`` (clamped to the bucket) as the content at ``now``."""
    return track.model_copy(
        update={"tokens": bucket_level(tokens, cfg), "tokens_at": now}
    )


def bucket_level(tokens: float, cfg: TokenBucketConfig) -> float:
    """``tokens`` clamped to the bucket, as :func:`set_tokens` stores them."""
    return _clamp(tokens, 0.0, float(cfg.max_tokens))


READY_SLACK = 1e-3
"""Seconds added to a computed refill moment; see :func:`token_ready_at`."""


def token_ready_at(track: AccountTrack, now: float, cfg: TokenBucketConfig) -> float:
    """The first moment at or after ``now`` when the bucket holds a whole token."""
    missing = 1.0 - current_tokens(track, now, cfg)
    if missing <= 0:
        return now
    # At epoch-scale times `now + delay` rounds by ~1e-7 s, which can leave the
    # bucket a hair under one token at the returned moment, and a caller waiting
    # until then would find nothing and wait for ~0 s again. A millisecond of slack
    # is far above that rounding and far below anything a user could notice.
    return now + missing * MINUTE / cfg.regeneration_rate_per_minute + READY_SLACK


# --- hybrid score -------------------------------------------------------------------


def idle_seconds(track: AccountTrack, now: float) -> float:
    """Seconds since the account was last picked; never picked counts as the cap."""
    if track.last_used is None:
        return FRESHNESS_CAP_SECONDS
    return min(_elapsed(track.last_used, now), FRESHNESS_CAP_SECONDS)


def hybrid_score(health: float, tokens: float, max_tokens: float, idle: float) -> float:
    """The reference README's weighted score (max 200 + 500 + 360 = 1060)."""
    freshness = min(max(idle, 0.0), FRESHNESS_CAP_SECONDS) * 0.1
    return health * 2 + (tokens / max_tokens) * 100 * 5 + freshness


# --- the picker's hot loop ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rates:
    """The settings in the units :func:`assess` wants, computed once per pick."""

    initial: float
    recovery_per_second: float
    max_tokens: float
    regen_per_second: float

    @classmethod
    def of(cls, health: HealthScoreConfig, bucket: TokenBucketConfig) -> Rates:
        return cls(
            float(health.initial),
            health.recovery_rate_per_hour / HOUR,
            float(bucket.max_tokens),
            bucket.regeneration_rate_per_minute / MINUTE,
        )


def assess(track: AccountTrack, now: float, r: Rates) -> tuple[float, float, float]:
    """(health, tokens, hybrid score) at ``now`` in one call.

    The same arithmetic as :func:`current_health`, :func:`current_tokens`,
    :func:`idle_seconds` and :func:`hybrid_score` (a test holds them equal),
    inlined because the picker runs it for every account on every request.
    For the same reason it compares instead of calling ``min``/``max`` (a builtin
    call costs several comparisons here); each comparison is the one ``min`` or
    ``max`` makes, so the results are the same bit for bit, NaN and -0.0
    included (a test holds this too).
    """
    health = track.health
    if health is None:
        health = r.initial
    else:
        at = track.health_at
        if at is not None and now > at:
            health += r.recovery_per_second * (now - at)
            if not health < HEALTH_MAX:  # min(HEALTH_MAX, health)
                health = HEALTH_MAX
    top = r.max_tokens
    tokens = track.tokens
    if tokens is None:
        tokens = top
    else:
        at = track.tokens_at
        if at is not None and now > at:
            tokens += r.regen_per_second * (now - at)
        if top < tokens:  # min(tokens, top)
            tokens = top
    used = track.last_used
    if used is None:
        idle = FRESHNESS_CAP_SECONDS
    else:
        idle = now - used
        if not idle > 0.0:  # max(0.0, idle)
            idle = 0.0
        elif idle > FRESHNESS_CAP_SECONDS:  # min(idle, FRESHNESS_CAP_SECONDS)
            idle = FRESHNESS_CAP_SECONDS
    return health, tokens, health * 2 + tokens / top * 500 + idle * 0.1
