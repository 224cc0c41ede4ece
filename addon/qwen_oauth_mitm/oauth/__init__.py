"""Qwen OAuth: device login with PKCE, token refresh, and a fake server for tests.

- :mod:`.protocol`: pure request builders, answer parsers, the poll state machine;
- :mod:`.client`: the HTTP layer (:class:`OAuthClient`) and the login driver
  (:func:`wait_for_token`);
- :mod:`.tokens`: the token lifecycle (:class:`TokenManager`);
- :mod:`.errors`: what can go wrong;
- :mod:`.fake_server`: a stand-in Qwen OAuth server on 127.0.0.1.
"""

from qwen_oauth_mitm.oauth.client import OAuthClient, PollProgress, wait_for_token
from qwen_oauth_mitm.oauth.errors import (
    AccessDenied,
    DeviceCodeExpired,
    DeviceFlowError,
    NeedsRelogin,
    NotJsonError,
    OAuthServerError,
    TransientAuthError,
)
from qwen_oauth_mitm.oauth.protocol import (
    DeviceAuthorization,
    PkcePair,
    TokenSet,
    make_pkce,
)
from qwen_oauth_mitm.oauth.tokens import TokenManager, UnknownAccount

__all__ = [
    "AccessDenied",
    "DeviceAuthorization",
    "DeviceCodeExpired",
    "DeviceFlowError",
    "NeedsRelogin",
    "NotJsonError",
    "OAuthClient",
    "OAuthServerError",
    "PkcePair",
    "PollProgress",
    "TokenManager",
    "TokenSet",
    "TransientAuthError",
    "UnknownAccount",
    "make_pkce",
    "wait_for_token",
]
