"""Fixtures for the OAuth tests: a fake server, a fake clock, an accounts file."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen_oauth_mitm.accounts import AccountsFile
from qwen_oauth_mitm.store import JsonStateFile, accounts_file

from .oauth_helpers import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path) -> JsonStateFile[AccountsFile]:
    return accounts_file(tmp_path / "opencode" / "qwen-auth-accounts.json")
