"""How long :meth:`Rotation.pick` takes among many accounts (for ``scripts/bench``).

The one module of the package that reads a clock: it is a measuring tool, not
rotation logic. The engine is warmed up first so every account has a stored track
(a realistic steady state, slower than all-fresh accounts), a tenth of them cool
down, and each timed pick is released so the state stays the same. No
conversation key is given: an affinity hit can stop the scan early, and the
figure wanted is the full scan, the worst case.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable

from qwen_oauth_mitm.config import Config, RotationStrategy
from qwen_oauth_mitm.rotation.engine import Pick, Rotation
from qwen_oauth_mitm.rotation.simulation import fake_account

T0 = 1_767_571_200.0  # 2026-01-05 00:00 UTC


def bench_pick(
    n_accounts: int,
    *,
    picks: int = 200,
    strategy: RotationStrategy = "hybrid",
    timer: Callable[[], float] = time.perf_counter,
) -> float:
    """Median seconds of one pick among ``n_accounts`` accounts."""
    accounts = [fake_account(f"acct_{i:05d}") for i in range(n_accounts)]
    rot = Rotation(Config(rotation_strategy=strategy))
    now = T0
    for i in range(n_accounts):  # every account used once, a tenth rate-limited
        pick = rot.pick(accounts, now)
        assert isinstance(pick, Pick)
        if i % 10 == 0:
            rot.record_rate_limit(pick, now, until=now + 86_400)
        else:
            rot.record_success(pick, now)
        now += 0.01
    samples = []
    for _ in range(picks):
        began = timer()
        result = rot.pick(accounts, now)
        samples.append(timer() - began)
        if isinstance(result, Pick):
            rot.release(result, now)
        now += 0.01
    return statistics.median(samples)


def bench_picks(sizes: Iterable[int] = (10, 100, 1000)) -> dict[int, float]:
    """Median seconds of one hybrid pick for each number of accounts."""
    return {n: bench_pick(n) for n in sizes}
