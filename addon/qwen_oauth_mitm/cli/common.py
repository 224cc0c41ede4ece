"""What every ``qwen-oauth`` command needs: paths, config, the store, output."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from qwen_oauth_mitm import redact
from qwen_oauth_mitm.accounts import Account, AccountsFile
from qwen_oauth_mitm.config import Config, load_config
from qwen_oauth_mitm.errors import QwenError
from qwen_oauth_mitm.oauth.client import OAuthClient
from qwen_oauth_mitm.oauth.tokens import (
    refresh_http_seconds,
    refresh_lock_seconds,
    register_secrets,
)
from qwen_oauth_mitm.paths import StatePaths, default_paths
from qwen_oauth_mitm.store import JsonStateFile, accounts_file


@dataclass
class Env:
    """The world a command runs in; tests build one with their own streams."""

    paths: StatePaths
    config: Config
    environ: Mapping[str, str]
    stdin: TextIO = field(default_factory=lambda: sys.stdin)
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    clock: Callable[[], float] = time.time

    @classmethod
    def from_os(cls) -> Env:
        paths = default_paths()
        loaded = load_config(user_file=paths.user_config, cwd=Path.cwd())
        env = cls(paths=paths, config=loaded.config, environ=os.environ)
        for warning in loaded.warnings:
            env.err(f"warning: {warning}")
        return env

    @property
    def store(self) -> JsonStateFile[AccountsFile]:
        return accounts_file(
            self.paths.accounts,
            lock_timeout=refresh_lock_seconds(self.config.timeouts.refresh_seconds),
        )

    def read_accounts(self) -> AccountsFile:
        accounts = self.store.read()
        register_secrets(accounts)
        return accounts

    def oauth_client(self) -> OAuthClient:
        return OAuthClient(
            self.config.oauth_base_url,
            self.config.client_id,
            timeout=refresh_http_seconds(self.config.timeouts.refresh_seconds),
            user_agent=self.config.upstream_headers.user_agent,
        )

    def out(self, text: str = "", *, end: str = "\n") -> None:
        """Write to stdout, redacted (a last line of defence)."""
        self.stdout.write(redact.redact(text) + end)
        self.stdout.flush()

    def err(self, text: str) -> None:
        self.stderr.write(redact.redact(text) + "\n")
        self.stderr.flush()


def find_account(accounts: AccountsFile, ref: str) -> Account:
    """The account named by id or label, or an error listing what exists."""
    found = accounts.find(ref)
    if found is None:
        known = ", ".join(a.label for a in accounts.accounts) or "none"
        raise QwenError(
            f"no account {ref!r} (accounts: {known}); see `qwen-oauth accounts`"
        )
    return found
