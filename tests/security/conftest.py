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

from .evil import EvilListener

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

with warnings.catch_warnings():
    # mitmproxy imports ldap3, which touches names pyasn1 deprecated (not ours).
    warnings.simplefilter("ignore", DeprecationWarning)
    import mitmproxy.io  # noqa: F401


@pytest.fixture
def evil() -> Iterator[EvilListener]:
    """A recording listener that must never hear from us."""
    with EvilListener() as listener:
        yield listener
