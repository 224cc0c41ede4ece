from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qwen_oauth_mitm.config import (
    ENV_VARS,
    Config,
    Layer,
    find_project_file,
    leaf_types,
    load_config,
    merge_layers,
    options_layer,
    parse_text_value,
    parse_timezone,
)
from qwen_oauth_mitm.errors import ConfigError


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """(user config file, project folder); neither file exists yet."""
    project = tmp_path / "project" / "sub"
    project.mkdir(parents=True)
    return tmp_path / "home" / "qwen.json", project


def test_defaults_match_the_reference_readme() -> None:
    c = Config()
    assert c.rotation_strategy == "hybrid"
    assert c.proactive_refresh is True
    assert c.refresh_window_seconds == 300
    assert c.max_rate_limit_wait_seconds == 300
    assert c.quiet_mode is False
    assert c.pid_offset_enabled is False
    assert c.health_score.model_dump() == {
        "initial": 70,
        "success_reward": 1,
        "rate_limit_penalty": -10,
        "failure_penalty": -20,
        "recovery_rate_per_hour": 2.0,
        "min_usable": 50,
    }
    assert c.token_bucket.model_dump() == {
        "max_tokens": 50,
        "regeneration_rate_per_minute": 6.0,
    }
    assert c.client_id == "f0304373b74a44d2b584a3fb70ca9e56"
    assert c.oauth_base_url == "https://chat.qwen.ai"
    assert c.base_url is None


def test_no_files_no_env_gives_defaults(dirs: tuple[Path, Path]) -> None:
    user, project = dirs
    loaded = load_config(user_file=user, cwd=project, env={})
    assert loaded.config == Config()
    assert loaded.warnings == ()


def test_each_layer_overrides_the_one_before(dirs: tuple[Path, Path]) -> None:
    user, project = dirs
    # Each layer sets the key the next one overrides, plus one key of its own.
    write_json(
        user,
        {
            "rotation_strategy": "round-robin",
            "refresh_window_seconds": 10,
            "health_score": {"initial": 60, "min_usable": 40},
        },
    )
    write_json(
        project.parent / ".opencode" / "qwen.json",
        {
            "rotation_strategy": "sequential",
            "refresh_window_seconds": 20,
            "quiet_mode": True,
            "health_score": {"initial": 65},
        },
    )
    env = {"QWEN_REFRESH_WINDOW_SECONDS": "30", "QWEN_QUIET_MODE": "false"}
    opts = {"refresh_window_seconds": 40, "health_score.min_usable": "45"}

    c = load_config(user_file=user, cwd=project, env=env, options=opts).config

    assert c.rotation_strategy == "sequential"  # project over user
    assert c.quiet_mode is False  # env over project
    assert c.refresh_window_seconds == 40  # options over env
    # Nested sections merge key by key, not as whole objects.
    assert c.health_score.initial == 65  # project
    assert c.health_score.min_usable == 45  # options over user
    assert c.health_score.success_reward == 1  # default


def test_project_file_is_found_from_the_working_directory_upward(
    tmp_path: Path,
) -> None:
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    found = write_json(tmp_path / "a" / ".opencode" / "qwen.json", {})
    assert find_project_file(deep) == found
    nearer = write_json(tmp_path / "a" / "b" / ".opencode" / "qwen.json", {})
    assert find_project_file(deep) == nearer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("on", True),
        ("false", False),
        ("0", False),
        ("No", False),
        ("off", False),
        ("", False),
    ],
)
def test_env_bools(dirs: tuple[Path, Path], text: str, expected: bool) -> None:
    user, project = dirs
    c = load_config(user_file=user, cwd=project, env={"QWEN_QUIET_MODE": text}).config
    assert c.quiet_mode is expected


@pytest.mark.parametrize(("text", "expected"), [("0", 0), (" 42 ", 42), ("600", 600)])
def test_env_ints(dirs: tuple[Path, Path], text: str, expected: int) -> None:
    user, project = dirs
    env = {"QWEN_MAX_RATE_LIMIT_WAIT_SECONDS": text}
    c = load_config(user_file=user, cwd=project, env=env).config
    assert c.max_rate_limit_wait_seconds == expected


def test_every_env_var_reaches_its_key(dirs: tuple[Path, Path]) -> None:
    user, project = dirs
    samples = {
        "client_id": "abc",
        "oauth_base_url": "http://127.0.0.1:9",
        "base_url": "http://127.0.0.1:8/v1",
        "rotation_strategy": "sequential",
        "proactive_refresh": "false",
        "refresh_window_seconds": "7",
        "max_rate_limit_wait_seconds": "8",
        "quiet_mode": "true",
        "pid_offset_enabled": "true",
        "debug": "1",
    }
    env = {var: samples[key] for var, key in ENV_VARS.items()}
    c = load_config(user_file=user, cwd=project, env=env).config
    for key, text in samples.items():
        assert getattr(c, key) == parse_text_value(key, text), key


def test_bad_value_in_a_file_names_file_key_value_and_choices(
    dirs: tuple[Path, Path],
) -> None:
    user, project = dirs
    write_json(user, {"rotation_strategy": "bogus"})
    with pytest.raises(ConfigError) as e:
        load_config(user_file=user, cwd=project, env={})
    assert str(e.value) == (
        f"{user}: invalid value \"bogus\" for 'rotation_strategy': "
        "input should be 'hybrid', 'round-robin' or 'sequential'"
    )


def test_bad_nested_value_in_the_project_file(dirs: tuple[Path, Path]) -> None:
    user, project = dirs
    path = write_json(
        project / ".opencode" / "qwen.json", {"health_score": {"initial": 170}}
    )
    with pytest.raises(ConfigError) as e:
        load_config(user_file=user, cwd=project, env={})
    assert str(e.value) == (
        f"{path}: invalid value 170 for 'health_score.initial': "
        "input should be less than or equal to 100"
    )


def test_bad_value_in_an_env_var_names_the_variable(dirs: tuple[Path, Path]) -> None:
    user, project = dirs
    env = {"QWEN_REFRESH_WINDOW_SECONDS": "soon"}
    with pytest.raises(ConfigError) as e:
        load_config(user_file=user, cwd=project, env=env)
    assert str(e.value) == (
        'environment variable QWEN_REFRESH_WINDOW_SECONDS: invalid value "soon" '
        "for 'refresh_window_seconds': expected a whole number"
    )


def test_bad_bool_and_bad_choice_in_env(dirs: tuple[Path, Path]) -> None:
    user, project = dirs
    with pytest.raises(ConfigError, match=r"QWEN_QUIET_MODE: invalid value \"maybe\""):
        load_config(user_file=user, cwd=project, env={"QWEN_QUIET_MODE": "maybe"})
    with pytest.raises(
        ConfigError,
        match=r"^environment variable QWEN_ROTATION_STRATEGY: invalid value \"lru\"",
    ):
        load_config(user_file=user, cwd=project, env={"QWEN_ROTATION_STRATEGY": "lru"})


def test_a_negative_number_is_refused_not_clamped(dirs: tuple[Path, Path]) -> None:
    user, project = dirs
    env = {"QWEN_MAX_RATE_LIMIT_WAIT_SECONDS": "-1"}
    with pytest.raises(ConfigError, match="greater than or equal to 0"):
        load_config(user_file=user, cwd=project, env=env)


def test_wrong_json_types_in_a_file_are_errors(dirs: tuple[Path, Path]) -> None:
    user, project = dirs
    # A string where a bool belongs must not be coerced silently from a file.
    write_json(user, {"quiet_mode": "yes"})
    with pytest.raises(
        ConfigError, match="'quiet_mode': input should be a valid boolean"
    ):
        load_config(user_file=user, cwd=project, env={})
    write_json(user, {"health_score": 5})
    with pytest.raises(ConfigError, match="'health_score': expected an object"):
        load_config(user_file=user, cwd=project, env={})


def test_invalid_json_file_is_a_clear_error(dirs: tuple[Path, Path]) -> None:
    user, project = dirs
    user.parent.mkdir(parents=True)
    user.write_text('{"quiet_mode": true,,}')
    with pytest.raises(ConfigError, match=rf"^config file {user} is not valid JSON"):
        load_config(user_file=user, cwd=project, env={})
    user.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold a JSON object, not a list"):
        load_config(user_file=user, cwd=project, env={})


def test_unknown_keys_warn_with_a_suggestion(dirs: tuple[Path, Path]) -> None:
    user, project = dirs
    write_json(
        user,
        {
            "$schema": "https://example.invalid/schema.json",
            "rotaton_strategy": "sequential",
            "token_bucket": {"max_token": 5},
        },
    )
    loaded = load_config(user_file=user, cwd=project, env={})
    assert loaded.config == Config()
    assert loaded.warnings == (
        f"{user}: unknown config key 'rotaton_strategy' ignored "
        "(did you mean 'rotation_strategy'?)",
        f"{user}: unknown config key 'token_bucket.max_token' ignored "
        "(did you mean 'token_bucket.max_tokens'?)",
    )


def test_options_layer_parses_text_for_float_options() -> None:
    # mitmproxy has no float options, so floats arrive as text.
    layer = options_layer({"token_bucket.regeneration_rate_per_minute": "2.5"})
    c = merge_layers([layer]).config
    assert c.token_bucket.regeneration_rate_per_minute == 2.5
    with pytest.raises(ConfigError) as e:
        options_layer({"timeouts.connect_seconds": "fast"}, name="--set")
    assert str(e.value) == (
        '--set timeouts.connect_seconds: invalid value "fast" for '
        "'timeouts.connect_seconds': expected a number"
    )


def test_merge_reports_the_layer_that_set_the_bad_value() -> None:
    layers = [
        Layer("first", {"refresh_window_seconds": -5}),
        Layer("second", {"quiet_mode": True}),
    ]
    with pytest.raises(ConfigError, match=r"^first: invalid value -5"):
        merge_layers(layers)


def test_leaf_types_cover_every_key() -> None:
    types = leaf_types()
    assert types["health_score.recovery_rate_per_hour"] is float
    assert types["token_bucket.max_tokens"] is int
    assert types["rotation_strategy"] is str
    assert types["base_url"] is str
    assert types["proactive_refresh"] is bool
    assert "health_score" not in types


@pytest.mark.parametrize(
    "name", ["Asia/Shanghai", "UTC", "UTC+8", "UTC+08:00", "UTC-05:30"]
)
def test_time_zones(name: str) -> None:
    assert parse_timezone(name) is not None


@pytest.mark.parametrize("name", ["Mars/Olympus", "UTC+99", "UTC+8:75", "utc+"])
def test_bad_time_zones(name: str) -> None:
    with pytest.raises(ValueError, match=r"time zone|UTC offset"):
        parse_timezone(name)
