"""Secret redaction: the registry, the patterns, and the logging filter."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from qwen_oauth_mitm import redact
from qwen_oauth_mitm.redact import (
    RedactingFilter,
    SecretRegistry,
    fingerprint,
    install_redaction,
)

TOKEN = "at-9f8e7d6c5b4a39281706"
REFRESH = "rt-0123456789abcdefXYZ"


@pytest.fixture
def registry() -> SecretRegistry:
    reg = SecretRegistry()
    reg.add(TOKEN, SecretStr(REFRESH), None, "")
    return reg


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger("test_redact")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log, stream
    log.removeHandler(handler)
    redact.REGISTRY.clear()


def test_fingerprint_is_short_stable_and_reveals_nothing() -> None:
    fp = fingerprint(TOKEN)
    assert re.fullmatch(r"\[redacted …[0-9a-f]{4}\]", fp)
    assert fp == fingerprint(TOKEN)
    assert fp != fingerprint(REFRESH)
    assert TOKEN[-4:] not in fp


def test_known_secrets_are_replaced(registry: SecretRegistry) -> None:
    text = registry.redact(f"token {TOKEN} and {REFRESH}!")
    assert TOKEN not in text
    assert REFRESH not in text
    assert text == f"token {fingerprint(TOKEN)} and {fingerprint(REFRESH)}!"


def test_short_values_are_not_registered() -> None:
    reg = SecretRegistry()
    reg.add("abc", "")
    assert len(reg) == 0
    assert reg.redact("abc") == "abc"


def test_a_secret_containing_another_is_hidden_whole() -> None:
    reg = SecretRegistry()
    reg.add("abcdefgh", "abcdefghijklmnop")
    assert reg.redact("abcdefghijklmnop") == fingerprint("abcdefghijklmnop")


def test_registry_forgets_the_oldest_past_its_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redact, "MAX_REGISTERED", 2)
    reg = SecretRegistry()
    reg.add("secret-one-1", "secret-two-2", "secret-three-3")
    assert len(reg) == 2
    assert "secret-one-1" in reg.redact("secret-one-1")
    assert "secret-three-3" not in reg.redact("secret-three-3")


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        ("Authorization: Bearer eyJhbGciOi.JIUzI1NiJ9.x-y_z", "eyJhbGciOi"),
        ("authorization: bearer abcdef123456", "abcdef123456"),
        ('{"access_token": "unknown-token-1", "x": 1}', "unknown-token-1"),
        ('{"refresh_token":"unknown-token-2"}', "unknown-token-2"),
        ('{"id_token" : "a.b.c-unknown"}', "a.b.c-unknown"),
        ("grant_type=refresh_token&refresh_token=unknown-3&client_id=x", "unknown-3"),
        ("code_verifier=unknown-verifier-4", "unknown-verifier-4"),
        ('{"device_code": "unknown-dc-5"}', "unknown-dc-5"),
    ],
)
def test_patterns_catch_unknown_secrets(text: str, gone: str) -> None:
    out = SecretRegistry().redact(text)
    assert gone not in out
    assert "[redacted" in out


def test_patterns_leave_other_text_alone() -> None:
    text = 'grant_type=refresh_token&client_id=abc {"token_type": "Bearer"} Bearer'
    assert SecretRegistry().redact(text) == text


def test_already_redacted_text_is_stable(registry: SecretRegistry) -> None:
    once = registry.redact(f'{{"access_token": "{TOKEN}"}}')
    assert registry.redact(once) == once


def test_filter_redacts_message_args_and_traceback(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, stream = logger
    redact.register(TOKEN, REFRESH)
    install_redaction(log.handlers)
    log.info("got %s", TOKEN)
    log.warning("dict %r", {"refresh_token": REFRESH})
    try:
        raise ValueError(f"bad token {TOKEN}")
    except ValueError:
        log.exception("failed with Bearer %s", "zzzzzzzzunknown")
    output = stream.getvalue()
    assert TOKEN not in output
    assert REFRESH not in output
    assert "zzzzzzzzunknown" not in output
    assert "ValueError: bad token [redacted" in output
    assert output.count(fingerprint(TOKEN)) == 2


def test_install_is_idempotent_and_defaults_to_root_handlers() -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())
    root.addHandler(handler)
    try:
        install_redaction()
        install_redaction()
        assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
    finally:
        root.removeHandler(handler)


def test_filter_survives_a_bad_format_string(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, stream = logger
    redact.register(TOKEN)
    install_redaction(log.handlers)
    log.info("broken %d", TOKEN)
    assert TOKEN not in stream.getvalue()
