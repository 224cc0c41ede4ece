"""Which flows are ours, and where an account's token may be sent.

Pure (no mitmproxy import needed, kept here because only the proxy uses it).

Intercepted: requests to ``portal.qwen.ai`` and to the host (and port) of the
configured ``base_url``. Everything else is passed through untouched.

A token is sent either to the configured ``base_url`` (exactly that URL: the user
chose it, so it wins over every account's own host), or, when none is configured,
over HTTPS to an allowed host: ``portal.qwen.ai`` or a DashScope host
(``dashscope.aliyuncs.com``, ``dashscope-intl.aliyuncs.com`` and other
``dashscope*.aliyuncs.com``). Hosts are compared exactly after parsing, so
``portal.qwen.ai.evil.example``, ``user@portal.qwen.ai@evil`` or a bare IP are
refused, never followed. A configured loopback ``base_url`` (the tests' stand-in)
allows nothing else: not another port on 127.0.0.1, nor an account's host.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from qwen_oauth_mitm.accounts import Account
from qwen_oauth_mitm.config import DEFAULT_API_BASE_URL, Config
from qwen_oauth_mitm.errors import QwenError
from qwen_oauth_mitm.oauth.protocol import PORTAL_HOST, is_qwen_api_host, resource_host


class DisallowedHost(QwenError):
    """An account's API base points at a host we never send tokens to."""


def configured_host(config: Config) -> tuple[str, int] | None:
    """(host, port) of the configured ``base_url``, if any."""
    if config.base_url is None:
        return None
    parts = urlsplit(config.base_url)
    if parts.hostname is None:
        return None
    default = 443 if parts.scheme == "https" else 80
    return parts.hostname.lower(), parts.port or default


def is_intercepted(host: str, port: int, config: Config) -> bool:
    """Is a request to ``host:port`` one of ours (the Qwen API)?"""
    host = host.lower().rstrip(".")
    if host == PORTAL_HOST:
        return True
    return configured_host(config) == (host, port)


def api_base(account: Account, config: Config) -> str:
    """The account's API base (``.../v1``, no trailing slash); raises
    :class:`DisallowedHost` when it would send the token somewhere else."""
    if config.base_url:
        return config.base_url.rstrip("/")  # the user chose it: always allowed
    if account.base_url:
        base = account.base_url.rstrip("/")
    elif account.resource_url:
        base = _from_resource_url(account)
    else:
        base = DEFAULT_API_BASE_URL
    parts = urlsplit(base)
    host = parts.hostname or ""
    if (
        parts.scheme != "https"
        or parts.username is not None
        or parts.password is not None
        or not is_qwen_api_host(host)
    ):
        raise DisallowedHost(
            f"account {account.label!r} points at {host or base!r}, which is not a "
            "Qwen/DashScope host; its token is not sent there (set base_url to "
            "allow a host)"
        )
    return base


def _from_resource_url(account: Account) -> str:
    raw = account.resource_url or ""
    host = resource_host(raw)
    if host is None:
        raise DisallowedHost(
            f"account {account.label!r} has a resource_url that is not a host name "
            f"({raw.strip()[:60]!r}); its token is not sent there"
        )
    return f"https://{host}/v1"
