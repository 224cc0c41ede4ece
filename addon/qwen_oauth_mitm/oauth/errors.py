"""What can go wrong talking to the Qwen OAuth server.

    AuthError (qwen_oauth_mitm.errors)
     +-- OAuthServerError        an answer we cannot use: unexpected status or error
     |    +-- NotJsonError       HTML (a web firewall page) or other non-JSON text
     |    +-- ForeignResourceUrl tokens for an API host that is not Qwen's: refused
     +-- TransientAuthError      network error, timeout or 5xx: retry later
     +-- DeviceFlowError         the login did not complete
     |    +-- DeviceCodeExpired  the user did not approve in time
     |    +-- AccessDenied       the user (or the server) refused
     +-- NeedsRelogin            the refresh token was refused: log in again

Messages are for users: they name the account and the server, never a token.
``authorization_pending`` and ``slow_down`` are not errors: they are poll state.
"""

from __future__ import annotations

import shlex

from qwen_oauth_mitm.errors import AuthError

DEVICE_CODE_EXPIRED_HELP = (
    "Device code expired: complete the browser login within 5 minutes of starting "
    "`qwen-oauth login`."
)


class OAuthServerError(AuthError):
    """The server answered something we cannot use."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error: str | None = None,
        description: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.description = description


class NotJsonError(OAuthServerError):
    """The server answered HTML or other text where JSON was expected."""


class ForeignResourceUrl(OAuthServerError):
    """A token answer whose ``resource_url`` names a host we never send tokens to."""


class TransientAuthError(AuthError):
    """A network failure, timeout or server error: worth retrying later."""


class DeviceFlowError(AuthError):
    """The device login ended without a token."""


class DeviceCodeExpired(DeviceFlowError):
    """The device code expired before the user approved the login."""

    def __init__(self, message: str = DEVICE_CODE_EXPIRED_HELP) -> None:
        super().__init__(message)


class AccessDenied(DeviceFlowError):
    """The login was refused in the browser."""


class NeedsRelogin(AuthError):
    """The account's refresh token is dead; only ``qwen-oauth login`` helps."""

    def __init__(
        self,
        message: str,
        *,
        account_id: str | None = None,
        label: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.account_id = account_id
        self.label = label
        self.reason = reason


def relogin_command(label: str) -> str:
    """The command that brings an account back, quoted for a shell when needed."""
    return f"qwen-oauth login --label {shlex.quote(label)}"
