"""Where our files live, the same folder OpenCode uses.

Linux and macOS: ``$XDG_CONFIG_HOME/opencode`` (default ``~/.config/opencode``).
platformdirs alone would give ``~/Library/Application Support`` on macOS, which is
not where OpenCode keeps its config, so it is used only on Windows
(``%APPDATA%\\opencode``). Pure: the platform, environment and home are passed in.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import platformdirs

APP_DIR = "opencode"
USER_CONFIG_FILE = "qwen.json"
ACCOUNTS_FILE = "qwen-auth-accounts.json"
TRACKER_STATE_FILE = "qwen-auth-tracker-state.json"


@dataclass(frozen=True)
class StatePaths:
    """The folder and the three files we read and write."""

    config_dir: Path

    @property
    def user_config(self) -> Path:
        return self.config_dir / USER_CONFIG_FILE

    @property
    def accounts(self) -> Path:
        return self.config_dir / ACCOUNTS_FILE

    @property
    def tracker_state(self) -> Path:
        return self.config_dir / TRACKER_STATE_FILE


def config_dir_for(
    platform: str, env: Mapping[str, str], home: str
) -> PurePosixPath | PureWindowsPath:
    """The OpenCode config folder for ``platform`` (a ``sys.platform`` value)."""
    if platform == "win32":
        appdata = env.get("APPDATA")
        if not appdata:
            # Only reached on a real Windows host without APPDATA in the environment.
            appdata = platformdirs.user_config_dir(appauthor=False, roaming=True)
        return PureWindowsPath(appdata) / APP_DIR
    xdg = env.get("XDG_CONFIG_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    base = PurePosixPath(xdg) if xdg.startswith("/") else PurePosixPath(home, ".config")
    return base / APP_DIR


def default_paths(env: Mapping[str, str] | None = None) -> StatePaths:
    """The paths on this machine, from the real platform and environment."""
    env = os.environ if env is None else env
    folder = config_dir_for(sys.platform, env, str(Path.home()))
    return StatePaths(Path(folder))
