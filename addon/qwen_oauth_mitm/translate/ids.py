"""Item ids for translated responses, behind an injectable factory.

An ``IdFactory`` maps a prefix (``resp``, ``msg``, ``rs``, ``fc``) to a fresh id such as
``resp_3f9a…``. The translators take one as a parameter, so tests can pass
``counter_ids()`` and get the same ids on every run; the shell passes
``random_ids`` (the only place randomness is read).
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable

__all__ = ["IdFactory", "counter_ids", "random_ids"]

type IdFactory = Callable[[str], str]


def random_ids(prefix: str) -> str:
    """An unguessable id, shaped like OpenAI's (prefix, underscore, 48 hex digits)."""
    return f"{prefix}_{secrets.token_hex(24)}"


def counter_ids() -> IdFactory:
    """Deterministic ids ``<prefix>_0001``, ``<prefix>_0002``… counted per prefix."""
    counters: dict[str, itertools.count[int]] = {}

    def make(prefix: str) -> str:
        counter = counters.setdefault(prefix, itertools.count(1))
        return f"{prefix}_{next(counter):04d}"

    return make
