"""The addon's log handlers: the log file is private."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from qwen_oauth_mitm.config import Config
from qwen_oauth_mitm.proxy.logs import LogSetup

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


@pytest.fixture
def setup() -> Iterator[LogSetup]:
    # A usual umask, so a file created without an explicit mode would be 0644.
    previous = os.umask(0o022)
    logs = LogSetup()
    yield logs
    logs.close()
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_log_file_is_0600(setup: LogSetup, tmp_path: Path) -> None:
    path = tmp_path / "qwen.log"
    setup.apply(Config(log_file=str(path)))
    logging.getLogger("qwen_oauth_mitm.test").warning("a line")
    assert "a line" in path.read_text()
    assert mode(path) == 0o600


def test_a_looser_log_file_is_tightened_with_a_warning(
    setup: LogSetup, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "qwen.log"
    path.write_text("earlier lines\n")
    path.chmod(0o644)
    setup.apply(Config(log_file=str(path)))
    assert mode(path) == 0o600
    assert "readable by others" in caplog.text
    assert path.read_text().startswith("earlier lines\n")  # appended to, not reset
