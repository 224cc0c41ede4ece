"""Shared test setup: hypothesis profiles, the fake OAuth server and portal, a temp
state folder, a clean redactor.

``HYPOTHESIS_PROFILE=fast`` for a quick local loop, ``deep`` for a long hunt; the
default ``ci`` profile is what ``scripts/test`` runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from qwen_oauth_mitm import redact
from qwen_oauth_mitm.oauth.fake_server import FakeQwenOAuth
from qwen_oauth_mitm.paths import StatePaths
from qwen_oauth_mitm.portal import FakePortal

settings.register_profile("ci", max_examples=200, deadline=None, print_blob=True)
settings.register_profile("fast", max_examples=20, deadline=None)
settings.register_profile(
    "deep",
    max_examples=20_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def fake() -> Iterator[FakeQwenOAuth]:
    """A fake Qwen OAuth server on 127.0.0.1 that approves after one poll."""
    with FakeQwenOAuth(interval=0.01, pending_polls=1) as server:
        yield server


@pytest.fixture
def portal(fake: FakeQwenOAuth) -> Iterator[FakePortal]:
    """The stand-in chat endpoint, accepting the fake OAuth server's tokens."""
    with FakePortal(fake) as p:
        yield p


@pytest.fixture
def paths(tmp_path: Path) -> StatePaths:
    """Where the code under test finds its accounts (a temp OpenCode folder)."""
    return StatePaths(tmp_path / "config" / "opencode")


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    """Secrets registered for redaction by one test do not leak into the next."""
    yield
    redact.REGISTRY.clear()


type CallCounter = Callable[[object, str], list[object]]


@pytest.fixture
def count_calls(monkeypatch: pytest.MonkeyPatch) -> CallCounter:
    """``count_calls(obj, "name")``: a list that grows by one at each call of
    ``obj.name`` from now on (the method still runs; undone after the test)."""

    def start(obj: object, name: str) -> list[object]:
        calls: list[object] = []
        real = getattr(obj, name)

        def counted(*args: object, **kwargs: object) -> object:
            calls.append(args)
            return real(*args, **kwargs)

        monkeypatch.setattr(obj, name, counted)
        return calls

    return start
