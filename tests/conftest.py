"""Shared test setup: hypothesis profiles.

``HYPOTHESIS_PROFILE=fast`` for a quick local loop, ``deep`` for a long hunt; the
default ``ci`` profile is what ``scripts/test`` runs.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=200, deadline=None, print_blob=True)
settings.register_profile("fast", max_examples=20, deadline=None)
settings.register_profile(
    "deep",
    max_examples=20_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
