"""The account commands other than ``login``."""

from __future__ import annotations

import asyncio
import getpass
import json
import re
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from qwen_oauth_mitm import redact
from qwen_oauth_mitm.accounts import Account, AccountsFile, new_account_id
from qwen_oauth_mitm.cli.common import Env, find_account
from qwen_oauth_mitm.cli.table import status_table
from qwen_oauth_mitm.errors import AuthError, QwenError
from qwen_oauth_mitm.oauth.errors import (
    ForeignResourceUrl,
    NeedsRelogin,
    relogin_command,
)
from qwen_oauth_mitm.oauth.protocol import check_resource_url
from qwen_oauth_mitm.oauth.tokens import TokenManager, refresh_lock_seconds
from qwen_oauth_mitm.rotation.status import format_duration

DEFAULT_KEY_BASE_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"
"""Where an API key goes when neither ``--base-url`` nor ``base_url`` says (the
DashScope OpenAI-compatible endpoint, Qwen Code's own fallback)."""
API_KEY_ENV = "QWEN_API_KEY"
QWEN_CODE_CREDS = Path(".qwen") / "oauth_creds.json"


# --- accounts -------------------------------------------------------------------------


def show_accounts(env: Env) -> int:
    accounts = env.read_accounts()
    now = env.clock()
    env.out(status_table(accounts, env.config, env.paths.tracker_state, now))
    for a in accounts.accounts:
        if a.needs_relogin and not a.disabled:
            reason = f" ({a.relogin_reason})" if a.relogin_reason else ""
            env.out(
                f"{a.label} needs a new login{reason}: run {relogin_command(a.label)}"
            )
    if accounts.accounts:
        env.out(
            "Requests are counted here: the Qwen API does not say how many are left."
        )
    return 0


def remove(env: Env, ref: str) -> int:
    removed: list[Account] = []

    def change(accounts: AccountsFile) -> AccountsFile:
        account = find_account(accounts, ref)
        removed.append(account)
        return accounts.remove(account.id)

    env.store.update(change)
    env.out(f"Removed account {removed[0].label!r} ({removed[0].id}).")
    return 0


def set_disabled(env: Env, ref: str, *, disabled: bool) -> int:
    changed: list[Account] = []

    def change(accounts: AccountsFile) -> AccountsFile:
        account = find_account(accounts, ref)
        new = account.model_copy(
            update={"disabled": disabled, "updated_at": env.clock()}
        )
        changed.append(new)
        return accounts.put(new)

    env.store.update(change)
    account = changed[0]
    if disabled:
        env.out(f"Disabled account {account.label!r}: it is left out of rotation.")
    else:
        env.out(f"Enabled account {account.label!r}.")
        if account.needs_relogin:
            env.out(
                f"It still needs a new login before it can be used: run "
                f"{relogin_command(account.label)}"
            )
    return 0


# --- refresh --------------------------------------------------------------------------


async def refresh(env: Env, ref: str | None) -> int:
    accounts = await asyncio.to_thread(env.read_accounts)
    targets = (
        [find_account(accounts, ref)]
        if ref
        else [a for a in accounts.accounts if a.kind == "oauth"]
    )
    if not targets:
        env.out("No OAuth account to refresh; add one with `qwen-oauth login`.")
        return 0
    failures = 0
    async with env.oauth_client() as client:
        manager = TokenManager(
            env.store,
            client,
            refresh_window_seconds=env.config.refresh_window_seconds,
            clock=env.clock,
            lock_timeout=refresh_lock_seconds(env.config.timeouts.refresh_seconds),
        )
        for account in targets:
            if account.kind != "oauth":
                env.out(f"{account.label}: an API-key account; keys are not refreshed.")
                continue
            try:
                fresh = await manager.refresh(account.id)
            except NeedsRelogin as e:
                failures += 1
                env.out(f"{account.label}: {e}")
                continue
            except AuthError as e:
                failures += 1
                env.out(f"{account.label}: refresh failed, try again later: {e}")
                continue
            left = (fresh.expires_at or env.clock()) - env.clock()
            valid = format_duration(left)
            env.out(f"{account.label}: refreshed; the token is valid for {valid}.")
    return 1 if failures else 0


# --- add-key --------------------------------------------------------------------------

_URL = re.compile(r"^https?://[^\s/]+\S*$")


def read_api_key(env: Env) -> str:
    """The key from ``$QWEN_API_KEY``, else stdin (hidden prompt on a terminal)."""
    key = env.environ.get(API_KEY_ENV)
    if not key:
        if env.stdin.isatty():
            key = getpass.getpass("API key (input hidden): ", stream=env.stderr)
        else:
            key = env.stdin.readline()
    key = (key or "").strip()
    if not key:
        raise QwenError(
            f"no API key given: pipe it on stdin or set {API_KEY_ENV} "
            "(never pass it as an argument)"
        )
    if len(key) < 8 or any(c.isspace() or not c.isprintable() for c in key):
        raise QwenError("that does not look like an API key (too short, or spaces)")
    redact.register(key)
    return key


def add_key(env: Env, *, label: str | None, base_url: str | None) -> int:
    key = read_api_key(env)
    url = (base_url or env.config.base_url or DEFAULT_KEY_BASE_URL).rstrip("/")
    if not _URL.match(url):
        raise QwenError(f"--base-url must be an http(s) URL, not {url!r}")
    now = env.clock()
    result: list[tuple[Account, str]] = []

    def change(accounts: AccountsFile) -> AccountsFile:
        candidate = Account(
            id=new_account_id(),
            label=label or "key",
            kind="key",
            access_token=SecretStr(key),
            base_url=url,
            added_at=now,
            updated_at=now,
        )
        match = accounts.same_login(candidate) or next(
            (
                a
                for a in accounts.accounts
                if label and a.label == label and a.kind == "key"
            ),
            None,
        )
        if match is not None:
            new = match.model_copy(
                update={
                    "access_token": candidate.access_token,
                    "base_url": url,
                    "updated_at": now,
                }
            )
            result.append((new, "Updated"))
            return accounts.put(new)
        new = candidate.model_copy(
            update={"label": accounts.unique_label(label or "key")}
        )
        result.append((new, "Added"))
        return accounts.put(new)

    env.store.update(change)
    account, verb = result[0]
    env.out(f"{verb} API-key account {account.label!r} ({account.id}) for {url}.")
    if label and account.label != label:
        env.out(
            f"Note: the label {label!r} is taken; this account is {account.label!r}."
        )
    return 0


# --- import-qwen-code -----------------------------------------------------------------


def _qwen_code_tokens(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QwenError(
            f"{path} does not exist: log in with Qwen Code first (`qwen`), "
            "or use `qwen-oauth login`"
        ) from None
    except OSError as e:
        raise QwenError(f"cannot read {path}: {e.strerror}") from None
    except ValueError:
        raise QwenError(f"{path} is not valid JSON") from None
    if not isinstance(data, dict):
        raise QwenError(f"{path} does not hold Qwen Code credentials")
    for key in ("access_token", "refresh_token"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise QwenError(f"{path} has no {key}; log in with Qwen Code again")
    redact.register(data["access_token"], data["refresh_token"])
    return data


def import_qwen_code(env: Env, *, label: str | None, file: Path | None) -> int:
    path = file or Path(env.environ.get("HOME") or Path.home()) / QWEN_CODE_CREDS
    data = _qwen_code_tokens(path)
    now = env.clock()
    expiry = data.get("expiry_date")
    expires_at = (
        float(expiry) / 1000
        if isinstance(expiry, int | float) and not isinstance(expiry, bool)
        else None
    )
    resource = data.get("resource_url")
    if isinstance(resource, str) and resource:
        try:
            check_resource_url(resource)
        except ForeignResourceUrl as e:
            raise QwenError(f"{path}: {e}") from None
    candidate = Account(
        id=new_account_id(),
        label=label or "qwen-code",
        kind="oauth",
        access_token=SecretStr(data["access_token"]),
        refresh_token=SecretStr(data["refresh_token"]),
        # Unknown expiry: treat as expiring, so the first use refreshes it.
        expires_at=expires_at if expires_at is not None else now,
        resource_url=resource if isinstance(resource, str) and resource else None,
        added_at=now,
        updated_at=now,
    )
    result: list[tuple[Account, str]] = []

    def change(accounts: AccountsFile) -> AccountsFile:
        match = accounts.same_login(candidate)
        if match is not None:
            new = match.model_copy(
                update={
                    "access_token": candidate.access_token,
                    "refresh_token": candidate.refresh_token,
                    "expires_at": candidate.expires_at,
                    "resource_url": candidate.resource_url or match.resource_url,
                    "needs_relogin": False,
                    "relogin_reason": None,
                    "updated_at": now,
                }
            )
            result.append((new, "Updated"))
            return accounts.put(new)
        new = candidate.model_copy(
            update={"label": accounts.unique_label(label or "qwen-code")}
        )
        result.append((new, "Added"))
        return accounts.put(new)

    env.store.update(change)
    account, verb = result[0]
    env.out(f"{verb} account {account.label!r} ({account.id}) from {path}.")
    env.out(
        "Note: Qwen Code and this proxy now share one login. When either refreshes "
        "it, the server may retire the other's refresh token; if that happens, run "
        "`qwen-oauth import-qwen-code` again or use `qwen-oauth login` for a login "
        "of its own."
    )
    return 0
