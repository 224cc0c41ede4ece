"""Which flows are ours, and where a token may go."""

from __future__ import annotations

import time

import pytest

from qwen_oauth_mitm.accounts import Account
from qwen_oauth_mitm.config import Config
from qwen_oauth_mitm.proxy.scope import DisallowedHost, api_base, is_intercepted


def _account(**fields: str) -> Account:
    now = time.time()
    base = {"id": "acct_a", "label": "a", "kind": "oauth"}
    return Account.model_validate(base | fields | {"added_at": now, "updated_at": now})


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("portal.qwen.ai", 443, True),
        ("PORTAL.qwen.ai.", 443, True),
        ("portal.qwen.ai.evil.example", 443, False),
        ("example.com", 443, False),
        ("127.0.0.1", 8000, False),
    ],
)
def test_intercepted_hosts_by_default(host: str, port: int, expected: bool) -> None:
    assert is_intercepted(host, port, Config()) is expected


def test_configured_base_url_host_and_port_are_intercepted() -> None:
    cfg = Config(base_url="http://127.0.0.1:8123/v1")
    assert is_intercepted("127.0.0.1", 8123, cfg)
    assert not is_intercepted("127.0.0.1", 8124, cfg)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, "https://portal.qwen.ai/v1"),
        ({"resource_url": "portal.qwen.ai"}, "https://portal.qwen.ai/v1"),
        ({"resource_url": "https://portal.qwen.ai/"}, "https://portal.qwen.ai/v1"),
        (
            {"resource_url": "dashscope-intl.aliyuncs.com"},
            "https://dashscope-intl.aliyuncs.com/v1",
        ),
        (
            {"base_url": "https://dashscope.aliyuncs.com/compatible-mode/v1/"},
            "https://dashscope.aliyuncs.com/compatible-mode/v1",
        ),
    ],
)
def test_api_base_of_an_account(fields: dict[str, str], expected: str) -> None:
    assert api_base(_account(**fields), Config()) == expected


@pytest.mark.parametrize(
    "fields",
    [
        {"resource_url": "portal.qwen.ai.evil.example"},
        {"resource_url": "evil.example"},
        {"resource_url": "user@portal.qwen.ai"},
        {"resource_url": "10.0.0.1"},
        {"resource_url": "portal.qwen.ai:8443/x"},
        {"resource_url": "portal.qwen.ai@evil.example"},
        {"resource_url": "127.0.0.1:8080"},
        {"resource_url": "[::1]"},
        {"resource_url": "http://portal.qwen.ai"},
        {"resource_url": "portal.qwen.ai\\@evil.example"},
        {"resource_url": "portal.qwen.ai%2eevil.example"},
        {"resource_url": "portal.qwen.ai."},
        {"base_url": "https://evil.example\\@portal.qwen.ai/v1"},
        {"base_url": "https://portal.qwen.ai:443@evil.example/v1"},
        {"base_url": "https://portal.qwen.ai./v1"},
        {"base_url": "https://[::1]/v1"},
        {"base_url": "https://127.0.0.1:8123/v1"},
        {"base_url": "https://user@portal.qwen.ai/v1"},
        {"base_url": "http://portal.qwen.ai/v1"},
        {"base_url": "https://evil.aliyuncs.com/v1"},
    ],
)
def test_a_foreign_host_is_refused(fields: dict[str, str]) -> None:
    with pytest.raises(DisallowedHost, match="not"):
        api_base(_account(**fields), Config())


def test_the_configured_base_url_wins_and_is_allowed() -> None:
    cfg = Config(base_url="http://127.0.0.1:9/v1/")
    account = _account(resource_url="evil.example")
    assert api_base(account, cfg) == "http://127.0.0.1:9/v1"


def test_a_configured_loopback_base_url_allows_no_other_loopback() -> None:
    # The tests' stand-in is allowed by configuring it; an account naming another
    # port on the same loopback address is not "the configured host".
    cfg = Config(base_url="http://127.0.0.1:8123/v1")
    assert not is_intercepted("127.0.0.1", 8124, cfg)
    for fields in (
        {"resource_url": "127.0.0.1:8124"},
        {"base_url": "http://127.0.0.1:8124/v1"},
    ):
        # Every token goes to the configured base, never to the account's own host.
        assert api_base(_account(**fields), cfg) == "http://127.0.0.1:8123/v1"
        with pytest.raises(DisallowedHost):
            api_base(_account(**fields), Config())
