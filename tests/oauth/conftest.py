"""Fixtures for the OAuth tests: a fake server, a fake clock, an accounts file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from qwen_oauth_mitm import redact
from qwen_oauth_mitm.accounts import AccountsFile
from qwen_oauth_mitm.oauth.fake_server import FakeQwenOAuth
from qwen_oauth_mitm.store import JsonStateFile, accounts_file

from .oauth_helpers import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake() -> Iterator[FakeQwenOAuth]:
    with FakeQwenOAuth(interval=0.01, pending_polls=1) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    yield
    redact.REGISTRY.clear()


@pytest.fixture
def store(tmp_path: Path) -> JsonStateFile[AccountsFile]:
    return accounts_file(tmp_path / "opencode" / "qwen-auth-accounts.json")
