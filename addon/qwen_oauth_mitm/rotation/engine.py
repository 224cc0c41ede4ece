"""The rotation engine: which account serves the next request, and what answers teach.

Pure; no I/O and no clock (every call takes ``now``, seconds since the epoch);
it never waits. :meth:`Rotation.pick` answers a :class:`Pick` or, when nothing can
serve, :class:`AllUnavailable` with the earliest moment something can; the caller
waits (:func:`wait_before_retry` bounds it by ``max_rate_limit_wait_seconds``) or
fails fast. Every pick must be settled once: by ``record`` (an upstream error
answer's :class:`~.ratelimit.Verdict`), ``record_success``, or ``release`` when the
request never reached the upstream (the bucket token and the day's request count
are given back, so a client that hangs up early costs the account nothing).

Usable, for every strategy: not disabled, not needing re-login, not cooling down,
not in the caller's ``exclude``. Hybrid adds: a whole token in the bucket (hard),
and health at least ``min_usable`` (soft: when health alone rules out every
account, the healthiest one is used rather than failing). Round-robin and
sequential take a bucket token too, so the table shows the same client-side
estimate, but they never wait for one.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from qwen_oauth_mitm.accounts import Account
from qwen_oauth_mitm.config import Config, parse_timezone
from qwen_oauth_mitm.rotation import health as h
from qwen_oauth_mitm.rotation.affinity import AffinityMap, digest
from qwen_oauth_mitm.rotation.days import QuotaDays
from qwen_oauth_mitm.rotation.picks import (
    AllUnavailable,
    Pick,
    PickReason,
    wait_before_retry,
)
from qwen_oauth_mitm.rotation.ratelimit import Verdict
from qwen_oauth_mitm.rotation.select import Choice, choose_hybrid, choose_in_order
from qwen_oauth_mitm.rotation.state import (
    EMPTY_TRACK,
    AccountTrack,
    Cooldown,
    CooldownReason,
    DayCounters,
    TrackerState,
)
from qwen_oauth_mitm.rotation.status import AccountStatus, account_status

__all__ = [
    "FAILURES_BEFORE_COOLDOWN",
    "AllUnavailable",
    "Pick",
    "PickReason",
    "Rotation",
    "wait_before_retry",
]

FAILURES_BEFORE_COOLDOWN = 3
"""Consecutive failures (no success between) before an account cools down."""
MAX_FAILURE_COOLDOWN_SECONDS = 3600.0


class Rotation:
    """Rotation state for one proxy process, over accounts identified by id."""

    def __init__(
        self, config: Config, state: TrackerState | None = None, *, pid: int = 0
    ) -> None:
        state = state or TrackerState()
        self._tracks: dict[str, AccountTrack] = dict(state.accounts)
        self._affinity = AffinityMap(state.affinity)
        self._cursor = state.cursor
        self._cursor_failed = state.cursor_failed
        self._pid = pid
        self._first_pick = True
        self.revision = 0
        """Grows on every change; the saver writes only when it moved."""
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """Use new settings from now on; the learned state is kept."""
        self._config = config
        self._days = QuotaDays(parse_timezone(config.quota_reset_timezone))
        self._rates = h.Rates.of(config.health_score, config.token_bucket)

    @property
    def config(self) -> Config:
        return self._config

    # --- picking ------------------------------------------------------------------

    @property
    def uses_conversations(self) -> bool:
        """Whether :meth:`pick` looks at a ``conversation_key`` (hybrid with
        ``conversation_affinity``): callers need not work one out otherwise."""
        cfg = self._config
        return cfg.rotation_strategy == "hybrid" and cfg.conversation_affinity

    def pick(
        self,
        accounts: Sequence[Account],
        now: float,
        *,
        conversation_key: str | None = None,
        exclude: Collection[str] = (),
    ) -> Pick | AllUnavailable:
        """Choose the account for one request, in O(len(accounts)).

        ``conversation_key`` names the conversation (the addon passes
        ``translate.affinity.conversation_key(body)``); under hybrid with
        ``conversation_affinity``, the account that served it last is preferred
        while it is usable. ``exclude`` holds ids already tried for this request;
        they are neither picked nor counted in ``retry_at``.
        """
        excluded = frozenset(exclude)
        # Digested once here: the lookup and the update after the pick share it.
        conversation = (
            digest(conversation_key)
            if conversation_key and self.uses_conversations
            else None
        )
        chosen = self._choose(accounts, now, conversation, excluded)
        if chosen is None:
            return self._unavailable(accounts, now, excluded)
        index, reason, score = chosen
        return self._take(accounts[index], now, reason, score, conversation)

    def _choose(
        self,
        accounts: Sequence[Account],
        now: float,
        conversation: str | None,
        excluded: frozenset[str],
    ) -> Choice | None:
        cfg, n = self._config, len(accounts)
        offset = self._pid % n if cfg.pid_offset_enabled and n else 0
        if cfg.rotation_strategy == "hybrid":
            return choose_hybrid(
                accounts,
                self._tracks,
                now,
                cfg,
                sticky=self._affinity.lookup(conversation) if conversation else None,
                excluded=excluded,
                offset=offset,
                rates=self._rates,
            )
        round_robin = cfg.rotation_strategy == "round-robin"
        return choose_in_order(
            accounts,
            self._tracks,
            now,
            cursor=self._cursor,
            # Sequential stays on its account until that one fails.
            stay=not round_robin and not self._cursor_failed,
            # The pid offset moves only this process's first pick; then the
            # cursor carries on from wherever that was.
            offset=offset if self._first_pick else 0,
            excluded=excluded,
            reason="round-robin" if round_robin else "sequential",
        )

    def _take(
        self,
        account: Account,
        now: float,
        reason: PickReason,
        score: float | None,
        conversation: str | None,
    ) -> Pick:
        bcfg = self._config.token_bucket
        track = self._tracks.get(account.id, EMPTY_TRACK)
        tokens = h.current_tokens(track, now, bcfg)
        taken = min(1.0, tokens)
        day = self._days.day(now)
        # One copy of the track for the bucket, the freshness and the count: this
        # runs on every request, and each model_copy costs microseconds.
        self._tracks[account.id] = track.model_copy(
            update={
                "tokens": h.bucket_level(tokens - taken, bcfg),
                "tokens_at": now,
                "last_used": now,
                "today": _count_request(track, day),
            }
        )
        self._cursor, self._cursor_failed = account.id, False
        self._first_pick = False
        if conversation is not None:
            self._affinity.store(conversation, account.id)
        self.revision += 1
        return Pick(account, reason, now, score, taken, track.last_used, day)

    def _unavailable(
        self, accounts: Sequence[Account], now: float, excluded: frozenset[str]
    ) -> AllUnavailable:
        statuses = tuple(self.status(accounts, now))
        waits = [
            s.until
            for s in statuses
            if s.until is not None and s.account_id not in excluded
        ]
        return AllUnavailable(min(waits, default=None), statuses, excluded)

    # --- settling a pick ----------------------------------------------------------

    def record(self, pick: Pick, verdict: Verdict, now: float) -> None:
        """Settle ``pick`` with the classified upstream error answer."""
        match verdict.kind:
            case "quota" | "rate_limit":
                until = verdict.until if verdict.until is not None else now
                self.record_rate_limit(
                    pick,
                    now,
                    until=until,
                    quota=verdict.kind == "quota",
                    detail=verdict.detail,
                )
            case "auth":
                self.record_auth_failure(pick, now)
            case "account" | "upstream":
                self.record_failure(
                    pick,
                    now,
                    account_fault=verdict.kind == "account",
                    detail=verdict.detail,
                )
            case "client":
                pass  # the request was wrong, not the account: nothing to learn

    def record_success(self, pick: Pick, now: float) -> None:
        """A 2xx answer: reward health, end a failure cooldown."""
        cfg = self._config.health_score
        track = h.adjust_health(self._track(pick), now, cfg.success_reward, cfg)
        cooldown = track.cooldown
        if cooldown is not None and cooldown.reason == "failure":
            cooldown = None  # it works again; rate-limit cooldowns stand
        self._put(
            pick,
            track.model_copy(
                update={
                    "last_success": now,
                    "consecutive_failures": 0,
                    "cooldown": cooldown,
                }
            ),
        )

    def record_rate_limit(
        self,
        pick: Pick,
        now: float,
        *,
        until: float,
        quota: bool = False,
        detail: str | None = None,
    ) -> None:
        """A 429 or quota answer: penalty, cooldown until ``until``, count it."""
        cfg = self._config.health_score
        track = h.adjust_health(self._track(pick), now, cfg.rate_limit_penalty, cfg)
        counters = _counters(track, self._days.day(now))
        track = track.model_copy(
            update={
                "last_failure": now,
                "today": counters.model_copy(
                    update={"rate_limits": counters.rate_limits + 1}
                ),
            }
        )
        reason: CooldownReason = "quota" if quota else "rate_limit"
        self._put(pick, _cool(track, until, reason, detail))
        self._move_on(pick)

    def record_failure(
        self,
        pick: Pick,
        now: float,
        *,
        account_fault: bool = True,
        detail: str | None = None,
    ) -> None:
        """A failure: the penalty only when it is the account's fault (a 403), not
        for the service's (5xx, connection). Either way, after
        ``FAILURES_BEFORE_COOLDOWN`` in a row the account cools down, twice as
        long each further time (from ``default_cooldown_seconds``, at most 1 h).
        """
        cfg = self._config.health_score
        track = self._track(pick)
        if account_fault:
            track = h.adjust_health(track, now, cfg.failure_penalty, cfg)
        failures = track.consecutive_failures + 1
        track = track.model_copy(
            update={"last_failure": now, "consecutive_failures": failures}
        )
        if failures >= FAILURES_BEFORE_COOLDOWN:
            doubling = min(failures - FAILURES_BEFORE_COOLDOWN, 16)
            seconds = self._config.default_cooldown_seconds * 2.0**doubling
            until = now + min(seconds, MAX_FAILURE_COOLDOWN_SECONDS)
            track = _cool(track, until, "failure", detail)
        self._put(pick, track)
        self._move_on(pick)

    def record_auth_failure(self, pick: Pick, now: float) -> None:
        """A 401: the token, not the account, is at fault; the caller refreshes and
        retries. An unauthenticated request spends no quota, so it is refunded."""
        self.release(pick, now)

    def release(self, pick: Pick, now: float) -> None:
        """The request never reached the upstream: give back its bucket token and
        its count, and restore ``last_used`` unless the account was picked since."""
        track = self._tracks.get(pick.account.id)
        if track is None:
            return
        bcfg = self._config.token_bucket
        tokens = h.current_tokens(track, now, bcfg) + pick.token_taken
        track = h.set_tokens(track, now, tokens, bcfg)
        update: dict[str, object] = {}
        if track.last_used == pick.at:
            update["last_used"] = pick.previous_last_used
        if track.today is not None and track.today.day == pick.day:
            requests = max(0, track.today.requests - 1)
            update["today"] = track.today.model_copy(update={"requests": requests})
        self._put(pick, track.model_copy(update=update))

    def _track(self, pick: Pick) -> AccountTrack:
        return self._tracks.get(pick.account.id, EMPTY_TRACK)

    def _put(self, pick: Pick, track: AccountTrack) -> None:
        self._tracks[pick.account.id] = track
        self.revision += 1

    def _move_on(self, pick: Pick) -> None:
        if self._cursor == pick.account.id:
            self._cursor_failed = True

    # --- reading ------------------------------------------------------------------

    def status(self, accounts: Sequence[Account], now: float) -> list[AccountStatus]:
        """Every account's state at ``now``, in the order given."""
        today = self._days.day(now)
        return [
            account_status(
                a, self._tracks.get(a.id, EMPTY_TRACK), now, self._config, today=today
            )
            for a in accounts
        ]

    def track(self, account_id: str) -> AccountTrack:
        """What is stored for one account (an empty track if nothing yet)."""
        return self._tracks.get(account_id, EMPTY_TRACK)

    def snapshot(self) -> TrackerState:
        """The state to persist."""
        return TrackerState(
            accounts=dict(self._tracks),
            cursor=self._cursor,
            cursor_failed=self._cursor_failed,
            affinity=self._affinity.to_dict(),
        )

    def prune(self, accounts: Sequence[Account]) -> int:
        """Forget accounts no longer in ``accounts``; returns how many were dropped."""
        keep = {a.id for a in accounts}
        gone = [i for i in self._tracks if i not in keep]
        for account_id in gone:
            del self._tracks[account_id]
        dropped = self._affinity.forget_accounts(keep)
        if gone or dropped:
            self.revision += 1
        return len(gone)


def _counters(track: AccountTrack, day: str) -> DayCounters:
    today = track.today
    return today if today is not None and today.day == day else DayCounters(day=day)


def _count_request(track: AccountTrack, day: str) -> DayCounters:
    """:func:`_counters` with one more request."""
    counters = _counters(track, day)
    # Built, not model_copy'd: for three plain fields pydantic-core's validation
    # is faster than model_copy's Python-level copy of __dict__ and fields set.
    return DayCounters(
        day=day, requests=counters.requests + 1, rate_limits=counters.rate_limits
    )


def _cool(
    track: AccountTrack, until: float, reason: CooldownReason, detail: str | None
) -> AccountTrack:
    """Set a cooldown, keeping an existing one that ends later (a quota cooldown
    must not be shortened by a throttling answer that arrives after it)."""
    current = track.cooldown
    if current is not None and current.until >= until:
        return track
    cooldown = Cooldown(until=until, reason=reason, detail=detail)
    return track.model_copy(update={"cooldown": cooldown})
