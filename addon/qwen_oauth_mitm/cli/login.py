"""``qwen-oauth login``: the device flow in a terminal, and storing its result.

Nothing is written until the server has handed out tokens, so a login stopped
with Ctrl-C, denied or expired leaves the accounts file exactly as it was.
"""

from __future__ import annotations

import asyncio
import io
import sys
import webbrowser
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import segno
from pydantic import SecretStr

from qwen_oauth_mitm import redact
from qwen_oauth_mitm.accounts import Account, AccountsFile, new_account_id
from qwen_oauth_mitm.cli.common import Env
from qwen_oauth_mitm.oauth.client import PollProgress, wait_for_token
from qwen_oauth_mitm.oauth.protocol import DeviceAuthorization, TokenSet, make_pkce
from qwen_oauth_mitm.oauth.tokens import apply_tokens
from qwen_oauth_mitm.rotation.status import format_duration

_TEXT_BROWSERS = frozenset({"www-browser", "links", "links2", "elinks", "lynx", "w3m"})


# --- storing a login (pure) ---------------------------------------------------------


@dataclass(frozen=True)
class LoginResult:
    accounts: AccountsFile
    account: Account
    action: Literal["added", "updated"]
    note: str | None = None


def merge_login(
    accounts: AccountsFile, tokens: TokenSet, now: float, label: str | None
) -> LoginResult:
    """Add the login as an account, or update the account it is a new login of.

    The same person (the server named them) or the same refresh token updates that
    account. Otherwise ``label`` naming an OAuth account updates it: that is the
    re-login we tell users to run (``qwen-oauth login --label X``), since Qwen's
    answers do not say who logged in. A known, different identity is never merged.
    """
    candidate = Account(
        id=new_account_id(),
        label=label or "account",
        kind="oauth",
        access_token=SecretStr(tokens.access_token),
        refresh_token=SecretStr(tokens.refresh_token) if tokens.refresh_token else None,
        expires_at=tokens.expires_at(now),
        resource_url=tokens.resource_url,
        identity=tokens.identity,
        added_at=now,
        updated_at=now,
    )
    note = None
    match = accounts.same_login(candidate)
    if match is None and label:
        named = next(
            (a for a in accounts.accounts if a.label == label and a.kind == "oauth"),
            None,
        )
        if (
            named
            and named.identity
            and tokens.identity
            and named.identity != tokens.identity
        ):
            note = (
                f"account {label!r} belongs to someone else ({named.identity}); "
                "this login was added as a new account"
            )
        else:
            match = named
    if match is not None:
        updated = apply_tokens(match, tokens, now)
        if label and label != match.label:
            note = f"this is a new login of account {match.label!r}; kept its label"
        if updated.disabled:
            note = (
                f"account {match.label!r} is still disabled; "
                f"enable it with `qwen-oauth enable {match.label}`"
            )
        return LoginResult(accounts.put(updated), updated, "updated", note)
    wanted = label or (tokens.identity.split("@")[0] if tokens.identity else None)
    fresh = candidate.model_copy(update={"label": accounts.unique_label(wanted)})
    if label and fresh.label != label and note is None:
        note = f"the label {label!r} is taken; this account is {fresh.label!r}"
    return LoginResult(accounts.put(fresh), fresh, "added", note)


# --- showing the login ----------------------------------------------------------------


def browser_available(environ: Mapping[str, str], platform: str = sys.platform) -> bool:
    """True when opening a graphical browser can work here.

    Not on a Linux/BSD without a display (SSH, containers, CI), and never a text
    browser (lynx, w3m...), which would take over the terminal while we poll.
    """
    if platform.startswith(("linux", "freebsd", "openbsd", "netbsd")) and not (
        environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY")
    ):
        return False
    if platform == "darwin" and environ.get("SSH_CONNECTION"):
        return False
    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        return False
    return getattr(browser, "name", "") not in _TEXT_BROWSERS


def render_qr(url: str) -> str | None:
    """The URL as a QR code made of block characters (None if it cannot be made)."""
    try:
        buffer = io.StringIO()
        segno.make(url, error="l").terminal(out=buffer, compact=True)
    except (ValueError, segno.DataOverflowError):
        return None
    return buffer.getvalue()


def show_authorization(
    env: Env, auth: DeviceAuthorization, *, open_browser: bool, qr: bool
) -> None:
    url = auth.url_to_open
    env.out("To sign in to Qwen, open this page and approve the login:")
    env.out()
    env.out(f"    {url}")
    env.out()
    env.out(f"Code: {auth.user_code}   (the page should show the same code)")
    if qr and (code := render_qr(url)) is not None:
        try:
            env.out("Or scan it with your phone:")
            env.out(code, end="")
        except UnicodeEncodeError:
            pass  # a terminal that cannot draw blocks: the URL is enough
    if open_browser:
        opened = False
        try:
            opened = webbrowser.open(url)
        except webbrowser.Error:
            opened = False
        if opened:
            env.out("(Opened it in your browser.)")


class Countdown:
    """A live 'time left' line on a terminal; occasional plain lines otherwise."""

    def __init__(self, env: Env, *, live: bool) -> None:
        self._env = env
        self._live = live
        self._last_shown: int | None = None
        self._drawn = False

    def __call__(self, progress: PollProgress) -> None:
        if progress.event == "slow_down":
            self._say(f"The server asked us to poll less often: {progress.detail}.")
            return
        if progress.event == "retrying":
            self._say(f"Network trouble, still trying: {progress.detail}")
            return
        left = int(progress.remaining)
        if self._live:
            if left != self._last_shown:
                self._last_shown = left
                self._env.stdout.write(
                    f"\r\033[KWaiting for approval… {left // 60}:{left % 60:02d} left "
                    "(Ctrl-C to cancel)"
                )
                self._env.stdout.flush()
                self._drawn = True
        elif self._last_shown is None or self._last_shown - left >= 60:
            self._last_shown = left
            self._env.out(f"Waiting for approval ({format_duration(left)} left)...")

    def _say(self, text: str) -> None:
        self.clear()
        self._env.out(text)

    def clear(self) -> None:
        if self._drawn:
            self._env.stdout.write("\r\033[K")
            self._env.stdout.flush()
            self._drawn = False


# --- the command ----------------------------------------------------------------------


async def login(
    env: Env, *, label: str | None, no_browser: bool, qr: bool = True
) -> int:
    """Run the device flow; store the account; 0 on success."""
    store = env.store
    # Fail on an unreadable accounts file now, not after the user approved.
    await asyncio.to_thread(env.read_accounts)
    live = env.stdout.isatty()
    countdown = Countdown(env, live=live)
    async with env.oauth_client() as client:
        pkce = make_pkce()
        auth = await client.request_device_code(pkce)
        open_browser = not no_browser and browser_available(env.environ)
        show_authorization(env, auth, open_browser=open_browser, qr=qr)
        env.out()
        try:
            tokens = await wait_for_token(client, auth, pkce, on_progress=countdown)
        finally:
            countdown.clear()
    redact.register(tokens.access_token, tokens.refresh_token)
    now = env.clock()
    outcome: list[LoginResult] = []

    def save(accounts: AccountsFile) -> AccountsFile:
        result = merge_login(accounts, tokens, now, label)
        outcome.append(result)
        return result.accounts

    written = await asyncio.to_thread(store.update, save)
    result = outcome[-1]
    account = result.account
    who = f" as {account.identity}" if account.identity else ""
    verb = "Added" if result.action == "added" else "Updated"
    env.out(f"Logged in{who}. {verb} account {account.label!r} ({account.id}).")
    if result.note:
        env.out(f"Note: {result.note}.")
    if account.expires_at is not None:
        env.out(
            f"The token is valid for {format_duration(account.expires_at - now)}; "
            "it is refreshed automatically."
        )
    count = len(written.accounts)
    env.out(f"{count} account{'s' if count != 1 else ''} stored in {store.path}")
    return 0
