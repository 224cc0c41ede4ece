"""The exceptions this package raises on purpose.

    QwenError                    base: every error we mean to show a user
     +-- ConfigError             a bad config value; names the source, key and value
     +-- StoreError              a state file cannot be read or written
     |    +-- CorruptStateError  a state file exists but does not parse
     +-- AuthError               login or refresh failed (see oauth.errors for more)

Messages are written for the user and never contain a token.
"""

from __future__ import annotations

from pathlib import Path


class QwenError(Exception):
    """Base class: an error with a message fit to show a user."""


class ConfigError(QwenError):
    """A configuration value is invalid; the message names where it came from."""


class StoreError(QwenError):
    """A state file could not be read or written."""

    def __init__(self, message: str, *, path: Path) -> None:
        super().__init__(message)
        self.path = path


class CorruptStateError(StoreError):
    """A state file exists but is not valid; it has been left as it was."""


class AuthError(QwenError):
    """Login or token refresh failed."""
