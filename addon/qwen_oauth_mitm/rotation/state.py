"""The rotation tracker's state, as persisted to ``qwen-auth-tracker-state.json``.

Pure data; no I/O. Everything is keyed by the account's stable ``id``, never by
its position in the accounts file (the reference plugin keyed by index, so removing
one account silently gave its health and bucket to the next one).

Values that change with time (health recovery, bucket regeneration) are stored as
"value at a moment" pairs and computed for ``now`` on demand (see ``health``), so a
state reloaded after hours of rest shows the recovery those hours earned.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

CooldownReason = Literal["rate_limit", "quota", "failure"]

MAX_AFFINITY_ENTRIES = 1024
"""Conversations remembered for affinity; the least recently used are forgotten."""

NonNegFloat = Annotated[float, Field(ge=0)]
NonNegInt = Annotated[int, Field(ge=0)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Cooldown(_Frozen):
    """The account must not be picked before ``until`` (seconds since the epoch)."""

    until: float
    reason: CooldownReason
    detail: str | None = None
    """A short human note, e.g. the upstream's error message (never a token)."""


class DayCounters(_Frozen):
    """Requests and 429s of one day, the day taken in the quota-reset time zone."""

    day: str
    """ISO date (``2026-01-31``) in the quota-reset time zone."""
    requests: NonNegInt = 0
    """Requests sent upstream (a refunded pick is not counted)."""
    rate_limits: NonNegInt = 0
    """429 / quota answers."""


class AccountTrack(_Frozen):
    """What rotation remembers about one account.

    ``None`` means "never happened": health ``None`` is the configured initial
    score (so a change of ``health_score.initial`` reaches untouched accounts), and
    tokens ``None`` is a full bucket.
    """

    health: Annotated[float, Field(ge=0, le=100)] | None = None
    """Health score at ``health_at``; recovery since then is computed on read."""
    health_at: float | None = None
    tokens: NonNegFloat | None = None
    """Bucket content at ``tokens_at``; regeneration since then is computed on read."""
    tokens_at: float | None = None
    last_used: float | None = None
    """When it was last picked (freshness in the hybrid score)."""
    last_success: float | None = None
    last_failure: float | None = None
    consecutive_failures: NonNegInt = 0
    """Failures since the last success (rate limits are not failures)."""
    cooldown: Cooldown | None = None
    today: DayCounters | None = None


EMPTY_TRACK = AccountTrack()
"""The track of an account rotation has never seen."""


class TrackerState(_Frozen):
    """The whole tracker file."""

    version: Literal[1] = 1
    accounts: dict[str, AccountTrack] = {}
    """Account id -> its track."""
    cursor: str | None = None
    """Id of the account round-robin / sequential used last."""
    cursor_failed: bool = False
    """Sequential: the cursor's account failed, so the next pick moves past it."""
    affinity: dict[str, str] = {}
    """Conversation (a digest of its key) -> id of the account that served it
    last, oldest first; at most ``MAX_AFFINITY_ENTRIES`` entries."""

    @field_validator("affinity")
    @classmethod
    def _bounded(cls, value: dict[str, str]) -> dict[str, str]:
        # A hand-edited or older file may hold more; keep the most recent ones.
        if len(value) <= MAX_AFFINITY_ENTRIES:
            return value
        return dict(list(value.items())[-MAX_AFFINITY_ENTRIES:])
