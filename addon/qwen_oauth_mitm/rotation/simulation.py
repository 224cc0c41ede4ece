"""A simulated day of agent traffic against a rate-limited fake upstream.

Pure; no I/O, simulated time only (a day runs in about a second). Agents send
bursts of back-to-back requests (an agent loop calling tools) separated by pauses
(the user reading). Each request goes through :class:`~.engine.Rotation` exactly as
the addon drives it: pick; on a 429, classify it, record it, and retry on another
account; when nothing is usable, wait up to ``max_rate_limit_wait_seconds`` for the
earliest moment one is, else fail the request to the client.

The fake upstream enforces, per account, ``per_minute`` requests in any 60 s
window (429 "Requests throttling triggered", no Retry-After: the real service
often sends none) and ``per_day`` requests per quota-zone day (429
``insufficient_quota``). Two invariants are checked on every step, independently
of the picker's own code: no account is picked that the strategy's rules exclude
while a usable one exists, and no request fails while an account was going to be
usable within the wait limit. A broken invariant raises ``AssertionError``.
"""

from __future__ import annotations

import datetime as dt
import heapq
import json
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import SecretStr

from qwen_oauth_mitm.accounts import Account
from qwen_oauth_mitm.config import Config, parse_timezone
from qwen_oauth_mitm.rotation import health as h
from qwen_oauth_mitm.rotation.engine import (
    AllUnavailable,
    Pick,
    Rotation,
    wait_before_retry,
)
from qwen_oauth_mitm.rotation.ratelimit import classify_error, quota_day

DAY = 86_400.0
RETRY_DELAY = 0.3
"""Seconds a 429 answer takes to come back before the request is retried."""
EPSILON = 1e-6
_THROTTLE = json.dumps(
    {
        "error": {
            "code": "Throttling.RateQuota",
            "message": "Requests throttling triggered.",
        }
    }
).encode()
_QUOTA = json.dumps(
    {
        "error": {
            "code": "insufficient_quota",
            "type": "insufficient_quota",
            "message": "Free allocated quota exceeded.",
        }
    }
).encode()


def fake_account(account_id: str, **changes: object) -> Account:
    """An account with a fake token (for simulations and tests)."""
    data: dict[str, object] = {
        "id": account_id,
        "label": account_id.removeprefix("acct_"),
        "kind": "oauth",
        "access_token": SecretStr(f"sim-token-{account_id}"),
        "added_at": 0.0,
        "updated_at": 0.0,
    }
    data.update(changes)
    return Account.model_validate(data)


@dataclass
class FakeUpstream:
    """Per-account limits: ``per_minute`` in any 60 s window, ``per_day`` a day."""

    tz: dt.tzinfo
    per_minute: int = 60
    per_day: int = 2000
    _windows: dict[str, deque[float]] = field(default_factory=dict)
    _days: dict[str, tuple[str, int]] = field(default_factory=dict)

    def answer(self, account_id: str, now: float) -> tuple[int, bytes]:
        day = quota_day(now, self.tz)
        seen_day, count = self._days.get(account_id, (day, 0))
        count = count if seen_day == day else 0
        if count >= self.per_day:
            return 429, _QUOTA
        window = self._windows.setdefault(account_id, deque())
        while window and window[0] <= now - 60:
            window.popleft()
        if len(window) >= self.per_minute:
            return 429, _THROTTLE
        window.append(now)
        self._days[account_id] = (day, count + 1)
        return 200, b""


@dataclass(frozen=True)
class Load:
    """Bursty agent traffic; the offered rate grows with ``agents``."""

    agents: int
    burst: tuple[int, int] = (5, 40)
    """Requests per burst, uniform."""
    latency: tuple[float, float] = (0.5, 4.0)
    """Seconds an answered request takes, uniform."""
    pause_mean: float = 300.0
    """Mean pause between bursts (exponential)."""
    bursts_per_conversation: int = 3


@dataclass
class SimResult:
    strategy: str
    agents: int
    offered: int = 0
    served: int = 0
    upstream_429s: int = 0
    quota_429s: int = 0
    waited: int = 0
    wait_total: float = 0.0
    wait_max: float = 0.0
    failed: int = 0
    first_failure: float | None = None
    """Seconds from the start to the first failed request."""
    same_account: int = 0
    """Served turns that went to the account of the conversation's previous turn."""
    follow_ups: int = 0


@dataclass
class _Agent:
    rng: random.Random
    burst_left: int = 0
    bursts: int = 0
    conversation: str = ""
    last_account: str | None = None
    started: float | None = None
    """Start of the request in progress (None between requests)."""
    waited: float = 0.0
    tried: set[str] = field(default_factory=set)


class Simulation:
    """One strategy under one load for ``duration`` simulated seconds."""

    def __init__(
        self,
        config: Config,
        load: Load,
        accounts: Sequence[Account],
        *,
        start: float,
        seed: int = 1,
        label: str | None = None,
    ) -> None:
        self.config = config
        self.load = load
        self.accounts = list(accounts)
        self.engine = Rotation(config)
        self.upstream = FakeUpstream(parse_timezone(config.quota_reset_timezone))
        self.start = start
        self.result = SimResult(label or config.rotation_strategy, load.agents)
        self._agents = [
            _Agent(random.Random(seed * 1000 + i)) for i in range(load.agents)
        ]
        self._events: list[tuple[float, int]] = []

    def run(self, duration: float) -> SimResult:
        for i, agent in enumerate(self._agents):
            self._schedule(
                self.start + agent.rng.expovariate(1 / self.load.pause_mean), i
            )
        end = self.start + duration
        while self._events and self._events[0][0] < end:
            now, i = heapq.heappop(self._events)
            self._step(self._agents[i], i, now)
        return self.result

    def _schedule(self, when: float, i: int) -> None:
        heapq.heappush(self._events, (when, i))

    def _step(self, agent: _Agent, i: int, now: float) -> None:
        if agent.started is None:
            if agent.burst_left == 0:  # a new burst, maybe a new conversation
                if agent.bursts % self.load.bursts_per_conversation == 0:
                    agent.conversation = f"agent{i}-conversation{agent.bursts}"
                    agent.last_account = None
                agent.bursts += 1
                agent.burst_left = agent.rng.randint(*self.load.burst)
            agent.started, agent.waited = now, 0.0
            agent.tried.clear()
            self.result.offered += 1
        result = self._pick(agent, now)
        if isinstance(result, AllUnavailable):
            delay = wait_before_retry(
                result,
                now,
                waited=now - agent.started,
                max_wait=self.config.max_rate_limit_wait_seconds,
            )
            if delay is None:
                self._check_failure_was_due(agent.started, now)
                self.result.failed += 1
                if self.result.first_failure is None:
                    self.result.first_failure = now - self.start
                self._finish(agent, i, now, served=False)
            else:
                agent.waited += delay + EPSILON
                self._schedule(now + delay + EPSILON, i)
            return
        status, body = self.upstream.answer(result.account.id, now)
        if status == 200:
            self.engine.record_success(result, now)
            self._served(agent, result)
            latency = agent.rng.uniform(*self.load.latency)
            self._finish(agent, i, now + latency, served=True)
            return
        verdict = classify_error(
            status,
            {},
            body,
            now=now,
            reset_tz=self.upstream.tz,
            default_cooldown=self.config.default_cooldown_seconds,
        )
        self.engine.record(result, verdict, now)
        self.result.upstream_429s += 1
        self.result.quota_429s += verdict.kind == "quota"
        agent.tried.add(result.account.id)
        self._schedule(now + RETRY_DELAY, i)

    def _pick(self, agent: _Agent, now: float) -> Pick | AllUnavailable:
        result = self._checked_pick(now, agent.conversation, agent.tried)
        if isinstance(result, AllUnavailable) and agent.tried:
            # Every untried account is unusable: the tried ones are fair game again.
            agent.tried.clear()
            result = self._checked_pick(now, agent.conversation, agent.tried)
        return result

    def _checked_pick(
        self, now: float, key: str, tried: set[str]
    ) -> Pick | AllUnavailable:
        """Pick, and hold the answer against the rules judged just before it."""
        rules = {a.id: self._rules(a, now) for a in self.accounts if a.id not in tried}
        result = self.engine.pick(
            self.accounts, now, conversation_key=key, exclude=tried
        )
        if isinstance(result, AllUnavailable):
            assert not any(u for u, _, _ in rules.values()), "none picked, one usable"
            return result
        usable, healthy, _ = rules.get(result.account.id, (False, False, None))
        assert usable, f"picked {result.account.id}, which the rules exclude"
        if not healthy:
            assert not any(u and hl for u, hl, _ in rules.values()), (
                f"picked unhealthy {result.account.id} while a healthy one was usable"
            )
        return result

    def _served(self, agent: _Agent, pick: Pick) -> None:
        r = self.result
        r.served += 1
        if agent.last_account is not None:
            r.follow_ups += 1
            r.same_account += agent.last_account == pick.account.id
        agent.last_account = pick.account.id
        if agent.waited > 0:
            r.waited += 1
            r.wait_total += agent.waited
            r.wait_max = max(r.wait_max, agent.waited)

    def _finish(self, agent: _Agent, i: int, when: float, *, served: bool) -> None:
        agent.started = None
        # A failed request ends the burst: the agent stops and the user steps in.
        agent.burst_left = agent.burst_left - 1 if served else 0
        if agent.burst_left == 0:
            when += agent.rng.expovariate(1 / self.load.pause_mean)
        self._schedule(when, i)

    # --- invariants, from the stored state and health's own functions ----------

    def _rules(self, account: Account, now: float) -> tuple[bool, bool, float | None]:
        """(usable now, healthy, earliest usable moment or None if never)."""
        if account.disabled or account.needs_relogin:
            return False, False, None
        cfg = self.config
        track = self.engine.track(account.id)
        ready = now
        if track.cooldown is not None:
            ready = max(ready, track.cooldown.until)
        healthy = True
        if cfg.rotation_strategy == "hybrid":
            ready = max(ready, h.token_ready_at(track, ready, cfg.token_bucket))
            health = h.current_health(track, now, cfg.health_score)
            healthy = health >= cfg.health_score.min_usable
        return ready <= now, healthy, ready

    def _check_failure_was_due(self, started: float, now: float) -> None:
        limit = self.config.max_rate_limit_wait_seconds
        for account in self.accounts:
            usable, _, ready = self._rules(account, now)
            assert not usable, f"failed while {account.id} was usable"
            if limit and ready is not None:
                assert ready > started + limit - 1e-3, (
                    f"failed although {account.id} was usable within the wait limit"
                )


def simulate(
    strategies: Sequence[tuple[str, Config]],
    agent_counts: Sequence[int],
    *,
    accounts: int = 3,
    duration: float = DAY,
    seed: int = 1,
    extra_accounts: Sequence[Account] = (),
) -> list[SimResult]:
    """Every strategy under every load; same seed, so the same offered traffic."""
    results = []
    for agents in agent_counts:
        for label, config in strategies:
            tz = parse_timezone(config.quota_reset_timezone)
            midnight = dt.datetime(2026, 1, 5, tzinfo=tz).timestamp()
            pool = [fake_account(f"acct_{k}") for k in range(accounts)]
            sim = Simulation(
                config,
                Load(agents),
                [*pool, *extra_accounts],
                start=midnight,
                seed=seed,
                label=label,
            )
            results.append(sim.run(duration))
    return results


def markdown_table(results: Sequence[SimResult]) -> str:
    """The results as a markdown table."""
    head = (
        "| strategy | agents | offered | served | upstream 429s (quota) | waited "
        "| mean / max wait | failed (first at) | same account as last turn |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    rows = [head]
    for r in results:
        mean = r.wait_total / r.waited if r.waited else 0.0
        same = f"{100 * r.same_account / r.follow_ups:.0f}%" if r.follow_ups else "-"
        first = "" if r.first_failure is None else f" ({r.first_failure / 3600:.1f} h)"
        rows.append(
            f"| {r.strategy} | {r.agents} | {r.offered} | {r.served} "
            f"| {r.upstream_429s} ({r.quota_429s}) | {r.waited} "
            f"| {mean:.1f} s / {r.wait_max:.0f} s | {r.failed}{first} | {same} |"
        )
    return "\n".join(rows)
