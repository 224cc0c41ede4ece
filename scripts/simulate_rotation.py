#!/usr/bin/env python3
"""Simulate a day of bursty agent traffic for each rotation strategy; print a table.

Pure simulated time (runs in seconds): 3 accounts, a fake upstream enforcing 60
requests/minute and 2,000 requests/day per account, the reference defaults for
everything else. See ``qwen_oauth_mitm.rotation.simulation``.

    .venv/bin/python scripts/simulate_rotation.py [--agents 1 2 4 8] [--seed 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "addon"))

from qwen_oauth_mitm.config import Config
from qwen_oauth_mitm.rotation.simulation import markdown_table, simulate

STRATEGIES = (
    ("hybrid", Config()),
    ("hybrid, no affinity", Config(conversation_affinity=False)),
    ("round-robin", Config(rotation_strategy="round-robin")),
    ("sequential", Config(rotation_strategy="sequential")),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hours", type=float, default=24.0)
    args = parser.parse_args()
    began = time.perf_counter()
    results = simulate(
        STRATEGIES, args.agents, duration=args.hours * 3600, seed=args.seed
    )
    print(markdown_table(results))
    print(
        f"\n(simulated {args.hours:g} h per row in {time.perf_counter() - began:.1f} s)"
    )


if __name__ == "__main__":
    main()
