"""The pick benchmark runs and reports a time (how fast is for scripts/bench)."""

from __future__ import annotations

import itertools

import pytest

from qwen_oauth_mitm.rotation.bench import bench_pick, bench_picks


def test_bench_pick_reports_the_median_of_the_timer() -> None:
    ticks = itertools.count()
    # A fake timer: each reading is 1 s after the previous one, so every pick
    # "takes" exactly 1 s.
    assert bench_pick(5, picks=7, timer=lambda: float(next(ticks))) == 1.0


@pytest.mark.parametrize("strategy", ["hybrid", "round-robin", "sequential"])
def test_bench_pick_runs_every_strategy(strategy: str) -> None:
    assert bench_pick(20, picks=5, strategy=strategy) > 0  # type: ignore[arg-type]


def test_bench_picks_covers_each_size() -> None:
    assert set(bench_picks((1, 3))) == {1, 3}
