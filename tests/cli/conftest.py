"""Fixtures for the CLI tests: a fake OAuth server and an isolated home."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from qwen_oauth_mitm.cli.common import Env
from qwen_oauth_mitm.config import Config
from qwen_oauth_mitm.oauth.fake_server import FakeQwenOAuth
from qwen_oauth_mitm.paths import StatePaths


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """main() configures logging for a process; undo it for the next tests."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    names = ("qwen_oauth_mitm", "httpx")
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


@pytest.fixture
def accounts_path(tmp_path: Path) -> Path:
    return tmp_path / "xdg" / "opencode" / "qwen-auth-accounts.json"


@pytest.fixture
def env(tmp_path: Path, fake: FakeQwenOAuth, home: Path) -> Env:
    """An in-process CLI environment writing to string buffers."""
    return Env(
        paths=StatePaths(tmp_path / "xdg" / "opencode"),
        config=Config(oauth_base_url=fake.url),
        environ={"HOME": str(home)},
        stdin=io.StringIO(),
        stdout=io.StringIO(),
        stderr=io.StringIO(),
    )


def out(env: Env) -> str:
    assert isinstance(env.stdout, io.StringIO)
    return env.stdout.getvalue()


@pytest.fixture
def cli_environ(tmp_path: Path, fake: FakeQwenOAuth, home: Path) -> dict[str, str]:
    """Environment for a real ``qwen-oauth`` subprocess (no browser, no display)."""
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("QWEN_")
        and k not in {"DISPLAY", "WAYLAND_DISPLAY", "BROWSER"}
    }
    environ.update(
        QWEN_OAUTH_BASE_URL=fake.url,
        XDG_CONFIG_HOME=str(tmp_path / "xdg"),
        HOME=str(home),
        PYTHONUNBUFFERED="1",
    )
    return environ
