"""``scripts/bench --smoke`` runs end to end and prints the table (so it cannot rot).

The figures of a smoke run mean nothing (a few samples); only the table's shape is
checked: every measurement of issue 8 has its rows, with numbers in them.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(120)]


def test_bench_smoke_prints_the_whole_table(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_BENCH_")}
    run = subprocess.run(
        [str(ROOT / "scripts" / "bench"), "--smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# Benchmarks\n")
    assert "CPUs (nproc)" in text
    assert "mitmproxy 12" in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    header, *body = rows
    assert header.split("|")[1:-1] == [
        " # ", " measurement ", " baseline ", " ours ", " ratio ", " goal ", " met ",
    ]  # fmt: skip
    sections = [row.split("|")[1].strip() for row in body]
    for section in "1234567":
        assert section in sections, f"no row for measurement {section}"
    for row in body:
        cells = row.split("|")[1:-1]
        assert len(cells) == 7, row
        assert re.search(r"\d", cells[3]), row  # "ours" holds a figure
    goals = [row for row in body if "✅" in row or "❌" in row]
    assert len(goals) >= 6  # translator, c/b x4, per-event, memory, pick
    assert not (ROOT / "docs" / "benchmarks.md").exists() or (
        "--smoke" not in (ROOT / "docs" / "benchmarks.md").read_text()
    )
