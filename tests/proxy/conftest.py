"""Proxy tests: mitmproxy imported once past a third-party warning; shared fixtures.

mitmproxy imports ldap3, which touches names pyasn1 deprecated; under
``filterwarnings=error`` that import would fail collection. The warning is not
ours and not about our use, so it is silenced for that one import only.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import mitmproxy.addons  # noqa: F401


@pytest.fixture(autouse=True)
def _restore_package_logger() -> Iterator[None]:
    """The addon sets the package logger's level (quiet/debug); put it back."""
    logger = logging.getLogger("qwen_oauth_mitm")
    level, handlers = logger.level, list(logger.handlers)
    yield
    logger.setLevel(level)
    for handler in logger.handlers:
        if handler not in handlers:
            logger.removeHandler(handler)
            handler.close()
