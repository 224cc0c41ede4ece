"""Secret redaction: the registry, the patterns, and the logging filter."""

from __future__ import annotations

import io
import json
import logging
import re
import time
import traceback
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from qwen_oauth_mitm import redact
from qwen_oauth_mitm.errors import CorruptStateError
from qwen_oauth_mitm.redact import (
    RedactingFilter,
    SecretRegistry,
    fingerprint,
    install_redaction,
)
from qwen_oauth_mitm.store import accounts_file

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


def test_registering_costs_about_the_secrets_themselves() -> None:
    # Every token refresh registers two secrets. One regular expression of all of
    # them, compiled anew each time, cost megabytes (and tens of milliseconds on
    # mitmproxy's loop) once there were a thousand: the soak saw mitmdump grow.
    registry = SecretRegistry()
    secrets = [f"tok-{i:05d}-" + "x" * 30 for i in range(2000)]
    tracemalloc.start()
    try:
        for secret in secrets:
            registry.add(secret)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    size = sum(len(x) for x in secrets)
    assert current < 8 * size, (current, size)
    assert peak < 12 * size, (peak, size)
    assert registry.redact(f"a {secrets[0]} b {secrets[-1]}") == (
        f"a {fingerprint(secrets[0])} b {fingerprint(secrets[-1])}"
    )


def test_a_secret_inside_other_text_or_with_spaces_is_hidden() -> None:
    reg = SecretRegistry()
    reg.add("inner-secret-1234", "two words secret")
    assert (
        reg.redact("x=inner-secret-1234&y") == f"x={fingerprint('inner-secret-1234')}&y"
    )
    assert reg.redact("aainner-secret-1234bb") == (
        f"aa{fingerprint('inner-secret-1234')}bb"
    )
    assert reg.redact("say two words secret now") == (
        f"say {fingerprint('two words secret')} now"
    )


def test_a_secret_registered_again_is_the_newest_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redact, "MAX_REGISTERED", 2)
    reg = SecretRegistry()
    reg.add("secret-one-1", "secret-two-2")
    reg.add("secret-one-1")  # still in use: the accounts file was read again
    reg.add("secret-three-3")
    assert "secret-one-1" not in reg.redact("secret-one-1")
    assert "secret-two-2" in reg.redact("secret-two-2")  # the oldest went


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


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        # Python reprs (a dict in an error message, pydantic's input_value)
        ("{'access_token': 'unknown-repr-1', 'x': 1}", "unknown-repr-1"),
        ("input_value={'id': 'a', 'refresh_token': 'rt-unknown-h5678'}", "h5678"),
        ("{'api_key': 'sk-unknown-repr-2'}", "sk-unknown-repr-2"),
        # header / YAML style
        ("access_token: unknown-yaml-3", "unknown-yaml-3"),
        ("refresh_token:unknown-yaml-4", "unknown-yaml-4"),
        ('access_token: "unknown-yaml-5"', "unknown-yaml-5"),
        ("x-api-key: sk-unknownheader6", "sk-unknownheader6"),
        ("X-Api-Key:sk-unknownheader7", "sk-unknownheader7"),
        ("api-key: sk-unknownheader8", "sk-unknownheader8"),
        ("api_key=sk-unknown-form-9", "sk-unknown-form-9"),
        ("apikey: sk-unknown-10", "sk-unknown-10"),
        # query strings
        ("GET https://h/x?token=unknown-url-11&a=1", "unknown-url-11"),
        ("https://h/cb?a=1&access_token=unknown-url-12#f", "unknown-url-12"),
        ("https://h/cb?code=unknown-url-13&state=s", "unknown-url-13"),
        ("https://h/v1?key=AIzaunknown14", "AIzaunknown14"),
        # JSON with other spacing, escaped inside a string, camelCase
        ('{"refresh_token" :  "unknown-json-15"}', "unknown-json-15"),
        ('{ "refresh_token"\t:\n"unknown-json-16" }', "unknown-json-16"),
        ('"{\\"access_token\\":\\"unknown-esc-17\\"}"', "unknown-esc-17"),
        ('{"accessToken": "unknown-camel-18"}', "unknown-camel-18"),
        ('{"client_secret": "unknown-secret-19"}', "unknown-secret-19"),
        # other Authorization schemes
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA"),
        ("authorization: Token unknown-tok-20", "unknown-tok-20"),
        ("{'authorization': 'unknown-raw-21'}", "unknown-raw-21"),
        ("Proxy-Authorization: Basic cHJveHk6c2VjcmV0", "cHJveHk6c2VjcmV0"),
    ],
)
def test_patterns_catch_other_notations(text: str, gone: str) -> None:
    out = SecretRegistry().redact(text)
    assert gone not in out, out
    assert "[redacted" in out


@pytest.mark.parametrize(
    "text",
    [
        "grant_type=refresh_token&client_id=abc",
        '{"token_type": "Bearer", "expires_in": 3600}',
        "could not refresh the token of account work: HTTP 500",
        "{'refresh_token': None, 'access_token': null}",
        "https://h/v1/chat/completions?stream=true",
        "Basic authentication is not supported",
    ],
)
def test_patterns_leave_ordinary_text_alone(text: str) -> None:
    assert SecretRegistry().redact(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "access_token" * 20_000,
        "access_token:" * 20_000,
        "'access_token'" * 20_000,
        "authorization: " + "a" * 200_000,
        "authorization: " * 20_000,
        '{"access_token": "' + "\\a" * 100_000,
        "Bearer " * 30_000,
        "?token=" * 30_000,
        "x-api-key" + " " * 200_000 + "x",
    ],
)
def test_patterns_take_linear_time(text: str) -> None:
    started = time.perf_counter()
    SecretRegistry().redact(text)
    assert time.perf_counter() - started < 1.0


def test_a_corrupt_accounts_file_error_reveals_no_token(tmp_path: Path) -> None:
    """An account without ``added_at``: pydantic's input values stay out of it."""
    access, refresh = "at-corrupt-secret-a1b2c3d4", "rt-corrupt-secret-e5f6h5678"
    account = {  # pydantic shows the start and the end of the input: tokens there
        "access_token": access,
        "id": "acct_x",
        "label": "x",
        "kind": "oauth",
        "expires_at": 1.0,
        "updated_at": 1.0,
        "refresh_token": refresh,
    }
    path = tmp_path / "qwen-auth-accounts.json"
    path.write_text(json.dumps({"version": 1, "accounts": [account]}))
    with pytest.raises(CorruptStateError) as info:
        accounts_file(path).read()
    error = info.value
    assert "added_at" in str(error)  # still says what is wrong, and where
    texts = {
        "str": str(error),
        "repr": repr(error),
        "cause": repr(error.__cause__) + str(error.__cause__),
        "context": repr(error.__context__) + str(error.__context__),
        "traceback": "".join(traceback.format_exception(error)),
    }
    for where, text in texts.items():
        for token in (access, refresh):
            assert token not in text, where
            assert token[-5:] not in text, where
            assert token[:7] not in text, where


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
