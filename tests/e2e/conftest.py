"""End-to-end tests with real clients (OpenCode, the Vercel AI SDK) through mitmdump.

They reuse ``tests/proxy/harness.py`` as ``tests.proxy.harness`` (the name mypy gives
it), so the repository root must be importable: pytest only puts ``tests/`` on
``sys.path`` (its rootdir-less conftest), where the harness is ``proxy.harness``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
