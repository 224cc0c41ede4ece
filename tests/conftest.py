"""Shared test setup: hypothesis profiles, the fake OAuth server, a clean redactor.

``HYPOTHESIS_PROFILE=fast`` for a quick local loop, ``deep`` for a long hunt; the
default ``ci`` profile is what ``scripts/test`` runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from qwen_oauth_mitm import redact
from qwen_oauth_mitm.oauth.fake_server import FakeQwenOAuth

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


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    """Secrets registered for redaction by one test do not leak into the next."""
    yield
    redact.REGISTRY.clear()
