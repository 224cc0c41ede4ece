"""Security tests across modules: where tokens may go, what may show them, file
modes, and flows that are not ours. Shared fixtures.

They reuse ``tests/proxy/harness.py`` as ``tests.proxy.harness`` (the name mypy
gives it), so the repository root is put on ``sys.path`` (as in ``tests/e2e``).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from qwen_oauth_mitm.oauth.fake_server import FakeQwenOAuth
from qwen_oauth_mitm.paths import StatePaths
from qwen_oauth_mitm.portal import FakePortal

from .evil import EvilListener

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

with warnings.catch_warnings():
    # mitmproxy imports ldap3, which touches names pyasn1 deprecated (not ours).
    warnings.simplefilter("ignore", DeprecationWarning)
    import mitmproxy.io  # noqa: F401


@pytest.fixture
def portal(fake: FakeQwenOAuth) -> Iterator[FakePortal]:
    """The stand-in chat endpoint, accepting the fake OAuth server's tokens."""
    with FakePortal(fake) as p:
        yield p


@pytest.fixture
def paths(tmp_path: Path) -> StatePaths:
    """Where the proxy under test finds its accounts (a temp OpenCode folder)."""
    return StatePaths(tmp_path / "config" / "opencode")


@pytest.fixture
def evil() -> Iterator[EvilListener]:
    """A recording listener that must never hear from us."""
    with EvilListener() as listener:
        yield listener
