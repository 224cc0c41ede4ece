"""``scripts/demo`` end to end: exit 0, streamed text, a failover, no process left."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from qwen_oauth_mitm.portal.standin import DEFAULT_TEXT

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(120)]


def _processes_with(marker: str) -> list[str]:
    """Command lines of live processes whose environment holds ``marker``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or proc.name == str(os.getpid()):
            continue
        try:
            if marker.encode() in (proc / "environ").read_bytes():
                cmdline = (proc / "cmdline").read_bytes()
                found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue  # gone, or not ours to read
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_demo_streams_fails_over_and_leaves_nothing_behind() -> None:
    marker = f"QWEN_DEMO_TEST_MARK={uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    env[marker.split("=")[0]] = marker.split("=")[1]
    start = time.monotonic()
    result = subprocess.run(
        [str(ROOT / "scripts" / "demo")],
        capture_output=True,
        env=env,
        cwd=ROOT,
        timeout=100,
        check=False,
    )
    took = time.monotonic() - start
    out = result.stdout.decode(errors="replace")
    assert result.returncode == 0, out + result.stderr.decode(errors="replace")
    assert took < 60, took
    assert out.count(f"answer: {DEFAULT_TEXT}") == 2  # multi-byte text intact
    assert "failover from acct" in out
    assert "HTTP 429 (injected 429)" in out
    assert "rate-limited until" in out  # qwen-oauth accounts shows the cooldown
    assert "Logged in as user1@" in out
    assert "Logged in as user2@" in out
    deadline = time.monotonic() + 5
    while (left := _processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, left
