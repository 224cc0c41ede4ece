"""``scripts/soak`` runs end to end with a hundred requests (so it cannot rot).

The run's invariants are the script's own (it exits 1 when one fails); here the
report's shape is checked too: every section is there, with figures in it.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(180)]


def test_soak_smoke_holds_its_invariants_and_reports_them(tmp_path: Path) -> None:
    out = tmp_path / "soak.md"
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_")}
    run = subprocess.run(
        [
            str(ROOT / "scripts" / "soak"),
            *("--requests", "100", "--kills", "1", "--seed", "3"),
            *("--out", str(out), "--no-docs"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    text = out.read_text()
    assert text.startswith("# Soak\n")
    assert text.rstrip().endswith("**All invariants held.**")
    assert re.search(r"\| sent \| 100 \|", text)
    served = re.search(r"\| served \(complete answer, whole text\) \| (\d+) \|", text)
    assert served is not None
    assert int(served[1]) > 80
    for section in ("| mitmdump RSS |", "| tokens and state |", "| SIGKILL under load"):
        assert section in text
    assert re.search(r"\| refreshes at the OAuth server \| \d+", text)
    assert "| tokens in mitmdump's output | 0 |" in text
