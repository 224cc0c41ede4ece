from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath

import pytest

from qwen_oauth_mitm.paths import StatePaths, config_dir_for, default_paths


@pytest.mark.parametrize("platform", ["linux", "darwin"])
def test_posix_default_is_dot_config_opencode(platform: str) -> None:
    # macOS too: OpenCode uses ~/.config there, not ~/Library/Application Support.
    assert config_dir_for(platform, {}, "/home/u") == PurePosixPath(
        "/home/u/.config/opencode"
    )


@pytest.mark.parametrize("platform", ["linux", "darwin"])
def test_posix_respects_xdg_config_home(platform: str) -> None:
    env = {"XDG_CONFIG_HOME": "/srv/cfg"}
    assert config_dir_for(platform, env, "/home/u") == PurePosixPath(
        "/srv/cfg/opencode"
    )


def test_relative_or_empty_xdg_is_ignored_as_the_spec_says() -> None:
    for value in ("relative/cfg", ""):
        got = config_dir_for("linux", {"XDG_CONFIG_HOME": value}, "/home/u")
        assert got == PurePosixPath("/home/u/.config/opencode")


def test_windows_uses_appdata() -> None:
    env = {"APPDATA": r"C:\Users\u\AppData\Roaming", "XDG_CONFIG_HOME": "/ignored"}
    got = config_dir_for("win32", env, r"C:\Users\u")
    assert got == PureWindowsPath(r"C:\Users\u\AppData\Roaming\opencode")


def test_file_names_are_the_reference_ones() -> None:
    paths = StatePaths(default_paths({"XDG_CONFIG_HOME": "/x"}).config_dir)
    assert paths.user_config.name == "qwen.json"
    assert paths.accounts.name == "qwen-auth-accounts.json"
    assert paths.tracker_state.name == "qwen-auth-tracker-state.json"
    assert paths.accounts.parent == paths.config_dir
