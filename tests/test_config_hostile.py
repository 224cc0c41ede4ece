"""Hostile config values, files and ``QWEN_*`` variables: one clear line each.

Every bad value is a ``ConfigError`` of one line that names where it came from
(the file, the variable, the ``--set`` option), the key, and what is allowed;
never a traceback, a silent default, or a value that breaks each request later
(a NUL in a header, an infinite timeout). ``tests/test_config.py`` has the
ordinary cases; these are the hostile ones. The same reasons reach the user from
``mitmdump -s addon/qwen_addon.py`` (it exits) and from the CLI (exit 2).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from qwen_oauth_mitm.cli import main
from qwen_oauth_mitm.config import WEEK, load_config, options_layer
from qwen_oauth_mitm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
MITMDUMP = Path(sys.executable).with_name("mitmdump")
SCRIPT = ROOT / "addon" / "qwen_addon.py"


def _nest(dotted: str, value: object) -> dict[str, Any]:
    head, _, rest = dotted.partition(".")
    return {head: _nest(rest, value) if rest else value}


def _error_of(
    tmp: Path,
    *,
    file: object = None,
    env: Mapping[str, str] | None = None,
    options: Mapping[str, object] | None = None,
) -> str:
    user = tmp / "qwen.json"
    if file is not None:
        user.write_text(json.dumps(file))
    with pytest.raises(ConfigError) as info:
        load_config(user_file=user, cwd=tmp, env=env or {}, options=options)
    message = str(info.value)
    assert "\n" not in message
    assert len(message) < 400, message
    return message


# (key, JSON value in a file, words of what is allowed)
FILE_VALUES: list[tuple[str, object, str]] = [
    ("timeouts.connect_seconds", -1, "greater than 0"),
    ("timeouts.connect_seconds", 0, "greater than 0"),
    ("timeouts.first_byte_seconds", 1e300, f"less than or equal to {WEEK}"),
    ("timeouts.between_chunks_seconds", float("inf"), "finite number"),
    ("timeouts.refresh_seconds", float("nan"), "finite number"),
    ("health_score.recovery_rate_per_hour", float("-inf"), "finite number"),
    ("refresh_window_seconds", 10**30, "less than or equal to"),
    ("max_rate_limit_wait_seconds", -(10**30), "greater than or equal to 0"),
    ("default_cooldown_seconds", 0, "greater than or equal to 1"),
    ("token_bucket.max_tokens", 10**12, "less than or equal to 1000000"),
    ("token_bucket.regeneration_rate_per_minute", 0, "greater than 0"),
    ("health_score.initial", True, "valid integer"),
    ("health_score.initial", "70", "valid integer"),
    ("health_score.initial", 70.5, "valid integer"),
    ("max_request_body_mb", 0, "greater than or equal to 1"),
    ("max_request_body_mb", 10**6, "less than or equal to 1024"),
    ("rotation_strategy", 5, "'hybrid', 'round-robin' or 'sequential'"),
    ("rotation_strategy", "HYBRID", "'hybrid', 'round-robin' or 'sequential'"),
    ("proactive_refresh", 1, "valid boolean"),
    ("proactive_refresh", None, "valid boolean"),
    ("client_id", "", "printable ASCII characters without spaces"),
    ("client_id", "a\x00b", "printable ASCII characters without spaces"),
    ("client_id", "x" * 300, "1 to 256"),
    ("client_id", ["id"], "valid string"),
    ("upstream_headers.user_agent", "ok\r\nX-Injected: 1", "printable ASCII"),
    ("upstream_headers.user_agent", "x" * 100_000, "at most 512"),
    ("upstream_headers.user_agent", "QwenCode ✓", "printable ASCII"),
    ("upstream_headers.dashscope_cache_control", "\x00", "printable ASCII"),
    ("base_url", "", "URL"),
    ("base_url", "ftp://portal.qwen.ai/v1", "http:// or https://"),
    ("base_url", "https:///v1", "host name"),
    ("base_url", "https://portal.qwen.ai\x00.evil.example/v1", "control characters"),
    ("base_url", "https://portal.qwen.ai /v1", "spaces"),
    ("base_url", "https://user@portal.qwen.ai/v1", "without user name"),
    ("base_url", "https://portal.qwen.ai:99999/v1", "URL such as"),
    ("base_url", "https://portal.qwen.ai:0/v1", "port between 1 and 65535"),
    ("base_url", "https://" + "a" * 3000, "at most 2048"),
    ("oauth_base_url", "chat.qwen.ai", "http:// or https://"),
    ("oauth_base_url", {"url": "x"}, "valid string"),
    ("quota_reset_timezone", "Mars/Olympus", "unknown time zone"),
    ("quota_reset_timezone", "../../etc/passwd", "unknown time zone"),
    ("quota_reset_timezone", "/etc/localtime", "unknown time zone"),
    ("quota_reset_timezone", "UTC+99", "bad UTC offset"),
    ("quota_reset_timezone", "x" * 5000, "characters)"),  # shown cut short
    ("log_file", "relative/qwen.log", "absolute path"),
    ("log_file", "/tmp/a\x00b.log", "file path"),
    ("log_file", 7, "valid string"),
]


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    FILE_VALUES,
    ids=[f"{k}={json.dumps(v)[:20]}" for k, v, _ in FILE_VALUES],
)
def test_hostile_values_in_a_file(
    tmp_path: Path, key: str, value: object, allowed: str
) -> None:
    message = _error_of(tmp_path, file=_nest(key, value))
    assert message.startswith(f"{tmp_path / 'qwen.json'}: invalid value ")
    assert f"for {key!r}: " in message
    assert allowed in message


# (variable, text, words of what is allowed)
ENV_VALUES: list[tuple[str, str, str]] = [
    ("QWEN_REFRESH_WINDOW_SECONDS", "nan", "expected a whole number"),
    ("QWEN_REFRESH_WINDOW_SECONDS", "1e3", "expected a whole number"),
    ("QWEN_REFRESH_WINDOW_SECONDS", "1_000", "expected a whole number"),
    ("QWEN_REFRESH_WINDOW_SECONDS", "١٢", "expected a whole number"),
    ("QWEN_REFRESH_WINDOW_SECONDS", "", "expected a whole number"),
    ("QWEN_REFRESH_WINDOW_SECONDS", "9" * 5000, "expected a whole number"),
    ("QWEN_REFRESH_WINDOW_SECONDS", "-5", "greater than or equal to 0"),
    ("QWEN_MAX_RATE_LIMIT_WAIT_SECONDS", "9" * 40, "less than or equal to"),
    ("QWEN_PROACTIVE_REFRESH", "2", "expected a boolean"),
    ("QWEN_QUIET_MODE", "yes please", "expected a boolean"),
    ("QWEN_DEBUG", "\u200btrue", "expected a boolean"),
    ("QWEN_ROTATION_STRATEGY", "", "'hybrid', 'round-robin' or 'sequential'"),
    ("QWEN_API_BASE_URL", "", "URL"),
    ("QWEN_API_BASE_URL", "portal.qwen.ai", "http:// or https://"),
    ("QWEN_OAUTH_BASE_URL", "https://chat.qwen.ai\t/", "spaces"),
    ("QWEN_OAUTH_CLIENT_ID", "two words", "without spaces"),
    ("QWEN_OAUTH_CLIENT_ID", "ключ", "printable ASCII"),
]


@pytest.mark.parametrize(("var", "text", "allowed"), ENV_VALUES)
def test_hostile_environment_variables(
    tmp_path: Path, var: str, text: str, allowed: str
) -> None:
    message = _error_of(tmp_path, env={var: text})
    assert message.startswith(f"environment variable {var}: invalid value ")
    assert allowed in message


# (option's dotted key, text as --set gives it, words of what is allowed)
OPTION_VALUES: list[tuple[str, object, str]] = [
    ("timeouts.connect_seconds", "inf", "finite number"),
    ("timeouts.connect_seconds", "-inf", "finite number"),
    ("timeouts.connect_seconds", "nan", "finite number"),
    ("timeouts.connect_seconds", "1e999", "finite number"),
    ("timeouts.connect_seconds", "-0", "greater than 0"),
    ("timeouts.connect_seconds", "٣", "expected a number"),
    ("timeouts.connect_seconds", "1_0", "expected a number"),
    ("timeouts.first_byte_seconds", "", "expected a number"),
    ("health_score.initial", -1, "greater than or equal to 0"),
    ("max_request_body_mb", 4096, "less than or equal to 1024"),
    ("upstream_headers.user_agent", "a\nb", "printable ASCII"),
    ("quota_reset_timezone", "Asia/Shanghai\x00", "unknown time zone"),
]


@pytest.mark.parametrize(("key", "text", "allowed"), OPTION_VALUES)
def test_hostile_set_options(
    tmp_path: Path, key: str, text: object, allowed: str
) -> None:
    message = _error_of(tmp_path, options={key: text})
    assert message.startswith(f"mitmproxy option {key}: invalid value ")
    assert f"for {key!r}: " in message
    assert allowed in message


def test_control_characters_are_shown_escaped(tmp_path: Path) -> None:
    message = _error_of(tmp_path, env={"QWEN_QUIET_MODE": "\x1b[31mred\r"})
    assert "\x1b" not in message
    assert "\r" not in message
    assert "\\u001b[31mred\\r" in message


def test_empty_log_file_means_none(tmp_path: Path) -> None:
    layer = options_layer({"log_file": ""})
    assert layer.values == {"log_file": ""}
    loaded = load_config(
        user_file=tmp_path / "none.json", cwd=tmp_path, env={}, options={"log_file": ""}
    )
    assert loaded.config.log_file is None


def test_a_home_relative_log_file_is_expanded(tmp_path: Path) -> None:
    loaded = load_config(
        user_file=tmp_path / "none.json",
        cwd=tmp_path,
        env={},
        options={"log_file": "~/qwen.log"},
    )
    assert loaded.config.log_file == os.path.expanduser("~/qwen.log")


# --- the config file itself -------------------------------------------------------


def _bad_file(tmp: Path, kind: str) -> Path:
    path = tmp / "qwen.json"
    match kind:
        case "list":
            path.write_text("[1, 2]")
        case "string":
            path.write_text('"hybrid"')
        case "not UTF-8":
            path.write_bytes(b'{"client_id": "\xff\xfe"}')
        case "a directory":
            path.mkdir()
        case "a symlink loop":
            path.symlink_to(path)
        case "deep":
            path.write_text("[" * 100_000 + "]" * 100_000)
        case "a huge number":
            path.write_text('{"refresh_window_seconds": ' + "9" * 5000 + "}")
        case "empty":
            path.write_text("")
        case "NUL bytes":
            path.write_bytes(b"\x00" * 16)
    return path


FILE_PROBLEMS = [
    ("list", "must hold a JSON object, not a list"),
    ("string", "must hold a JSON object, not a string"),
    ("not UTF-8", "is not UTF-8 text (byte 15)"),
    ("a directory", "cannot read config file"),
    ("a symlink loop", "cannot read config file"),
    ("deep", "is not valid JSON"),
    ("a huge number", "is not valid JSON"),
    ("empty", "is not valid JSON"),
    ("NUL bytes", "is not valid JSON"),
]


@pytest.mark.parametrize(("kind", "words"), FILE_PROBLEMS)
def test_hostile_config_files(tmp_path: Path, kind: str, words: str) -> None:
    path = _bad_file(tmp_path, kind)
    with pytest.raises(ConfigError) as info:
        load_config(user_file=path, cwd=tmp_path, env={})
    message = str(info.value)
    assert str(path) in message
    assert words in message
    assert "\n" not in message
    assert len(message) < 300


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_config_file(tmp_path: Path) -> None:
    path = tmp_path / "qwen.json"
    path.write_text("{}")
    path.chmod(0)
    with pytest.raises(ConfigError, match=r"cannot read config file .*: Permission"):
        load_config(user_file=path, cwd=tmp_path, env={})


# --- the CLI: exit 2 with the reason ------------------------------------------------


@pytest.fixture
def cli_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty XDG config home for the CLI; returns where qwen.json goes."""
    for var in [v for v in os.environ if v.startswith("QWEN_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "xdg" / "opencode"
    folder.mkdir(parents=True)
    return folder / "qwen.json"


@pytest.mark.parametrize(
    ("setup", "words"),
    [
        (("env", "QWEN_REFRESH_WINDOW_SECONDS", "inf"), "QWEN_REFRESH_WINDOW_SECONDS"),
        (("env", "QWEN_API_BASE_URL", "https://user@evil.example"), "user name"),
        (("file", "", b"\xff{}"), "is not UTF-8"),
        (("file", "", b'{"timeouts": {"connect_seconds": 1e999}}'), "finite"),
    ],
)
def test_the_cli_exits_2_with_the_reason(
    cli_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    setup: tuple[str, str, Any],
    words: str,
) -> None:
    where, var, value = setup
    if where == "env":
        monkeypatch.setenv(var, value)
    else:
        cli_home.write_bytes(value)
    assert main(["accounts"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qwen-oauth: error: ")
    assert words in err
    assert err.count("\n") == 1
    assert "Traceback" not in err


# --- mitmdump: exits at start, saying why ------------------------------------------


@pytest.mark.e2e
@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("env", "file", "options", "words"),
    [
        (
            {"QWEN_REFRESH_WINDOW_SECONDS": "nan"},
            None,
            [],
            "environment variable QWEN_REFRESH_WINDOW_SECONDS: invalid value",
        ),
        ({}, b"\xff\xfe{}", [], "is not UTF-8 text"),
        (
            {},
            None,
            ["--set", "qwen_timeouts_connect_seconds=inf"],
            "mitmproxy option timeouts.connect_seconds: invalid value",
        ),
        (
            {},
            None,
            ["--set", "qwen_log_file=relative.log"],
            "expected an absolute path",
        ),
    ],
    ids=["env", "file", "set", "log_file"],
)
def test_mitmdump_exits_with_the_reason(
    tmp_path: Path,
    env: dict[str, str],
    file: bytes | None,
    options: list[str],
    words: str,
) -> None:
    config = tmp_path / "xdg"
    (config / "opencode").mkdir(parents=True)
    if file is not None:
        (config / "opencode" / "qwen.json").write_bytes(file)
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("QWEN_") and not k.upper().endswith("_PROXY")
    }
    environ.update(env, XDG_CONFIG_HOME=str(config), HOME=str(tmp_path))
    args = [
        str(MITMDUMP),
        "--listen-host", "127.0.0.1",
        "--listen-port", "0",
        "--set", f"confdir={tmp_path / 'mitm'}",
        "--set", "connection_strategy=lazy",
        "-s", str(SCRIPT),
        *options,
    ]  # fmt: skip
    done = subprocess.run(
        args, env=environ, cwd=tmp_path, capture_output=True, timeout=60
    )
    out = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode != 0, out
    [line] = [line for line in out.splitlines() if "bad configuration" in line]
    assert words in line
    assert "Traceback" not in out
