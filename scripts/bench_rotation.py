"""Cost of one rotation pick among 10, 100 and 1,000 accounts (goal: < 1 ms at 1,000).

    .venv/bin/python scripts/bench_rotation.py

Hybrid (the full scored scan, the worst case), round-robin and sequential; medians of
200 picks each, in a realistic steady state (see ``qwen_oauth_mitm.rotation.bench``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "addon"))

from qwen_oauth_mitm.config import RotationStrategy
from qwen_oauth_mitm.rotation.bench import bench_pick

SIZES = (10, 100, 1000)
STRATEGIES: tuple[RotationStrategy, ...] = ("hybrid", "round-robin", "sequential")


def main() -> None:
    print("| strategy | " + " | ".join(f"{n} accounts" for n in SIZES) + " |")
    print("|---|" + "---:|" * len(SIZES))
    for strategy in STRATEGIES:
        cells = [f"{bench_pick(n, strategy=strategy) * 1e6:.1f} µs" for n in SIZES]
        print(f"| {strategy} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
