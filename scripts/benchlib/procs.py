"""Start ``mitmdump`` on 127.0.0.1 (a free port, its own confdir and process group).

Shared by the plain pass-through (no addon) and the addon instances, so both get
the same flags: ``connection_strategy=lazy``, the default log level, a log file.

For experiments (nothing else reads these):

- ``QWEN_BENCH_ADDON=/path/to/qwen_addon.py``: load that script instead of the
  repository's (a patched scratch copy);
- ``QWEN_BENCH_PROFILE=DIR``: run each ``mitmdump`` under ``cProfile``; the stats
  are written to ``DIR/<name>.pstats`` when it stops (SIGTERM ends it cleanly).
"""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.proxy.harness import mitmdump_args, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
ADDON = ROOT / "addon" / "qwen_addon.py"


@dataclass
class Mitmdump:
    name: str
    port: int
    confdir: Path
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(
            cafile=str(self.confdir / "mitmproxy-ca-cert.pem")
        )

    def memory(self) -> dict[str, int]:
        """``VmRSS`` and ``VmHWM`` (peak) of the process, in KiB."""
        return read_memory(self.process.pid)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def read_memory(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment without any ``*_PROXY`` variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"  # the log is read while mitmdump runs
    return env


@contextmanager
def mitmdump(
    workdir: Path,
    name: str,
    options: Sequence[str] = (),
    *,
    addon: bool,
    env: Mapping[str, str] = {},
) -> Iterator[Mitmdump]:
    """A running ``mitmdump``; stopped (its whole process group) on exit."""
    script = Path(os.environ.get("QWEN_BENCH_ADDON") or ADDON)
    prefix: list[str] = []
    if profile := os.environ.get("QWEN_BENCH_PROFILE"):
        out_file = Path(profile).resolve() / f"{name}.pstats"
        out_file.parent.mkdir(parents=True, exist_ok=True)
        prefix = [sys.executable, "-m", "cProfile", "-o", str(out_file)]
    home = workdir / name
    home.mkdir(parents=True, exist_ok=True)
    confdir = home / "mitm"
    confdir.mkdir(exist_ok=True)
    log = home / "mitmdump.log"
    args = [*prefix, *mitmdump_args(confdir, options, script=script if addon else None)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=clean_env(env),
            cwd=home,
            start_new_session=True,  # its own process group, stopped as a whole
        )
    try:
        yield Mitmdump(
            name, wait_for_port(log, process, timeout=30), confdir, log, process
        )
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, then SIGKILL it if it lingers."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        if process.poll() is not None:
            break
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    # Anything left in the group (mitmdump starts no children, but be sure).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
