"""The ``qwen-oauth`` CLI as a real subprocess (shared by the CLI and security
tests)."""

from __future__ import annotations

import subprocess
import sys


def run_cli(
    args: list[str],
    environ: dict[str, str],
    *,
    stdin: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """``python -m qwen_oauth_mitm *args`` with ``environ``, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "qwen_oauth_mitm", *args],
        env=environ,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
