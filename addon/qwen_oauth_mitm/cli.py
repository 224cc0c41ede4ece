"""The ``qwen-oauth`` command line (filled in by the login issue)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``qwen-oauth`` console script."""
    del argv
    print("qwen-oauth: commands arrive with the login issue", file=sys.stderr)
    return 2
