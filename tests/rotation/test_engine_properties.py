"""Properties of the engine under random sequences of picks, answers and time."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from qwen_oauth_mitm.accounts import Account
from qwen_oauth_mitm.config import Config
from qwen_oauth_mitm.rotation import health as h
from qwen_oauth_mitm.rotation.affinity import digest
from qwen_oauth_mitm.rotation.engine import AllUnavailable, Pick, Rotation
from qwen_oauth_mitm.rotation.simulation import fake_account
from qwen_oauth_mitm.rotation.state import AccountTrack, Cooldown, TrackerState

T0 = dt.datetime(2026, 1, 5, tzinfo=dt.UTC).timestamp()
STRATEGIES = ("hybrid", "round-robin", "sequential")


@dataclass(frozen=True)
class Op:
    kind: str
    which: int = 0
    """Index into the picks made so far (modulo), or a subset mask for a pick."""
    amount: float = 0.0
    flag: bool = False


small_steps = st.sampled_from([0.0, 0.5, 2.0, 10.0])
ops = st.lists(
    st.one_of(
        st.builds(
            Op, st.just("pick"), st.integers(0, 255), st.just(0.0), st.booleans()
        ),
        st.builds(Op, st.just("success"), st.integers(0, 99)),
        st.builds(
            Op,
            st.just("rate_limit"),
            st.integers(0, 99),
            st.floats(0, 7200),
            st.booleans(),
        ),
        st.builds(
            Op, st.just("failure"), st.integers(0, 99), st.just(0.0), st.booleans()
        ),
        st.builds(Op, st.just("release"), st.integers(0, 99)),
        st.builds(Op, st.just("advance"), st.just(0), small_steps | st.floats(0, 4000)),
        st.builds(Op, st.just("pick"), st.just(0), st.just(0.0), st.booleans()),
    ),
    max_size=80,
)

configs = st.builds(
    lambda strategy, bucket, regen, affinity, pid_offset: Config.model_validate(
        {
            "rotation_strategy": strategy,
            "token_bucket": {
                "max_tokens": bucket,
                "regeneration_rate_per_minute": regen,
            },
            "conversation_affinity": affinity,
            "pid_offset_enabled": pid_offset,
        }
    ),
    st.sampled_from(STRATEGIES),
    st.integers(1, 10) | st.just(1),
    st.floats(0.5, 60),
    st.booleans(),
    st.booleans(),
)

account_lists = st.lists(
    st.sampled_from(["ok", "ok", "ok", "disabled", "relogin"]), min_size=1, max_size=6
).map(
    lambda kinds: [
        fake_account(
            f"acct_{i}", disabled=kind == "disabled", needs_relogin=kind == "relogin"
        )
        for i, kind in enumerate(kinds)
    ]
)


def rules(rot: Rotation, account: Account, now: float) -> tuple[bool, bool]:
    """(usable, healthy) by the documented rules, from the stored state."""
    cfg = rot.config
    track = rot.track(account.id)
    if account.disabled or account.needs_relogin:
        return False, False
    if track.cooldown is not None and track.cooldown.until > now:
        return False, False
    if cfg.rotation_strategy != "hybrid":
        return True, True
    if h.current_tokens(track, now, cfg.token_bucket) < 1:
        return False, False
    return True, h.current_health(track, now, cfg.health_score) >= 50


class Driver:
    """Runs ops against an engine, checking invariants after each step."""

    def __init__(self, config: Config, accounts: list[Account], pid: int) -> None:
        self.rot = Rotation(config, pid=pid)
        self.accounts = accounts
        self.now = T0
        self.picks: list[Pick] = []
        self.history: list[tuple[str, Any]] = []

    def apply(self, op: Op) -> None:
        if op.kind == "advance":
            self.now += op.amount
        elif op.kind == "pick":
            self.pick(op)
        elif self.picks:
            pick = self.picks[op.which % len(self.picks)]
            self.settle(op, pick)
        self.check_bucket()

    def pick(self, op: Op) -> None:
        excluded = {a.id for i, a in enumerate(self.accounts) if op.which >> i & 1}
        before = {
            a.id: rules(self.rot, a, self.now)
            for a in self.accounts
            if a.id not in excluded
        }
        key = "conversation" if op.flag else None
        result = self.rot.pick(
            self.accounts, self.now, conversation_key=key, exclude=excluded
        )
        if isinstance(result, AllUnavailable):
            assert not any(usable for usable, _ in before.values())
            if result.retry_at is not None:
                assert result.retry_at > self.now
            self.history.append(("none", None))
            return
        usable, healthy = before.get(result.account.id, (False, False))
        assert usable, f"picked excluded {result.account.id}"
        if not healthy:
            assert not any(u and hl for u, hl in before.values())
        self.picks.append(result)
        self.history.append(("pick", result.account.id))

    def settle(self, op: Op, pick: Pick) -> None:
        rot, now = self.rot, self.now
        if op.kind == "success":
            rot.record_success(pick, now)
        elif op.kind == "rate_limit":
            rot.record_rate_limit(pick, now, until=now + op.amount, quota=op.flag)
            self.history.append(("limit", pick.account.id))
        elif op.kind == "failure":
            rot.record_failure(pick, now, account_fault=op.flag)
            self.history.append(("failure", pick.account.id))
        else:
            rot.release(pick, now)

    def check_bucket(self) -> None:
        top = self.rot.config.token_bucket.max_tokens
        for status in self.rot.status(self.accounts, self.now):
            assert 0 <= status.tokens <= top
            assert 0 <= status.health <= 100


@given(configs, account_lists, ops, st.integers(0, 99))
def test_never_picks_an_excluded_account_while_a_usable_one_exists(
    config: Config, accounts: list[Account], steps: list[Op], pid: int
) -> None:
    driver = Driver(config, accounts, pid)
    for op in steps:
        driver.apply(op)


@given(
    st.integers(1, 8),
    st.integers(0, 30),
    st.integers(0, 99),
    st.booleans(),
)
def test_round_robin_visits_all_n_accounts_in_n_picks(
    n: int, earlier: int, pid: int, pid_offset: bool
) -> None:
    config = Config(rotation_strategy="round-robin", pid_offset_enabled=pid_offset)
    rot = Rotation(config, pid=pid)
    accounts = [fake_account(f"acct_{i}") for i in range(n)]
    for i in range(earlier):
        assert isinstance(rot.pick(accounts, T0 + i), Pick)
    seen = []
    for i in range(n):
        result = rot.pick(accounts, T0 + earlier + i)
        assert isinstance(result, Pick)
        seen.append(result.account.id)
    assert sorted(seen) == sorted(a.id for a in accounts)


@given(account_lists, ops, st.integers(0, 99))
def test_sequential_changes_account_only_after_a_limit_or_failure(
    accounts: list[Account], steps: list[Op], pid: int
) -> None:
    config = Config(rotation_strategy="sequential", pid_offset_enabled=True)
    driver = Driver(config, accounts, pid)
    for op in steps:
        if op.kind == "pick":
            op = Op("pick", 0, 0.0, op.flag)  # the caller excludes nothing here
        driver.apply(op)
    current: str | None = None
    since: set[str] = set()  # accounts that failed or were limited since
    for event, account_id in driver.history:
        if event in ("limit", "failure"):
            since.add(account_id)
        elif event == "pick":
            if current is not None and account_id != current:
                assert current in since, f"left {current} without a reason"
            current, since = account_id, set()


moments = st.none() | st.floats(T0 - 20_000, T0)
tracks = st.builds(
    AccountTrack,
    health=st.none() | st.floats(0, 100),
    health_at=st.just(T0),
    tokens=st.none() | st.floats(0, 50),
    tokens_at=st.floats(T0 - 30, T0),
    last_used=moments,
    cooldown=st.none()
    | st.builds(
        Cooldown,
        until=st.floats(T0 - 100, T0 + 100),
        reason=st.sampled_from(["rate_limit", "quota", "failure"]),
    ),
)


@given(
    account_lists.flatmap(
        lambda accounts: st.tuples(
            st.just(accounts),
            st.lists(tracks, min_size=len(accounts), max_size=len(accounts)),
            st.lists(st.sampled_from([a.id for a in accounts]), max_size=2),
        )
    ),
    st.booleans(),
)
def test_hybrid_obeys_its_rules_from_any_stored_state(
    case: tuple[list[Account], list[AccountTrack], list[str]], sticky: bool
) -> None:
    accounts, stored, excluded = case
    state = TrackerState(
        accounts={a.id: t for a, t in zip(accounts, stored, strict=True)},
        affinity={digest("k"): accounts[0].id} if sticky else {},
    )
    rot = Rotation(Config(), state)
    before = {a.id: rules(rot, a, T0) for a in accounts if a.id not in excluded}
    result = rot.pick(accounts, T0, conversation_key="k", exclude=excluded)
    if isinstance(result, AllUnavailable):
        assert not any(usable for usable, _ in before.values())
        return
    usable, healthy = before.get(result.account.id, (False, False))
    assert usable
    assert healthy or not any(u and hl for u, hl in before.values())
    assert result.reason == ("score" if healthy else "healthiest") or (
        result.reason == "affinity" and healthy
    )
    if result.reason == "score":  # the best score among the healthy usable ones
        rates = h.Rates.of(rot.config.health_score, rot.config.token_bucket)
        best = max(
            h.assess(state.accounts[i], T0, rates)[2]
            for i, (u, hl) in before.items()
            if u and hl
        )
        assert result.score == best
