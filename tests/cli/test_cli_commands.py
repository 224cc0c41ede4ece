"""The CLI in-process: storing logins, the account commands, errors and exit codes."""

from __future__ import annotations

import io
import json
import time
import webbrowser
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from qwen_oauth_mitm.accounts import Account, AccountsFile
from qwen_oauth_mitm.cli import EXIT_FAILURE, build_parser, main, run
from qwen_oauth_mitm.cli.common import Env
from qwen_oauth_mitm.cli.login import (
    Countdown,
    browser_available,
    merge_login,
    render_qr,
)
from qwen_oauth_mitm.errors import QwenError
from qwen_oauth_mitm.oauth.client import PollProgress
from qwen_oauth_mitm.oauth.fake_server import FakeQwenOAuth
from qwen_oauth_mitm.oauth.protocol import TokenSet

from .conftest import out

NOW = 1_800_000_000.0


def tokens(n: int, identity: str | None = None) -> TokenSet:
    return TokenSet(f"at-{n:010d}", f"rt-{n:010d}", expires_in=3600, identity=identity)


def cli(env: Env, *args: str) -> int:
    return run(env, build_parser().parse_args(list(args)))


def stored(env: Env) -> AccountsFile:
    return env.store.read()


# --- merge_login ----------------------------------------------------------------------


def test_first_login_is_added() -> None:
    r = merge_login(AccountsFile(), tokens(1), NOW, None)
    assert r.action == "added"
    assert r.account.label == "account-1"
    assert r.account.expires_at == NOW + 3600
    assert r.account.access_token is not None
    assert r.account.access_token.get_secret_value() == "at-0000000001"


def test_a_second_login_adds_a_second_account() -> None:
    first = merge_login(AccountsFile(), tokens(1), NOW, None).accounts
    r = merge_login(first, tokens(2), NOW, None)
    assert r.action == "added"
    assert [a.label for a in r.accounts.accounts] == ["account-1", "account-2"]


def test_same_identity_updates_in_place() -> None:
    first = merge_login(AccountsFile(), tokens(1, "ann@x.org"), NOW, None)
    assert first.account.label == "ann"
    r = merge_login(first.accounts, tokens(2, "ann@x.org"), NOW + 5, None)
    assert r.action == "updated"
    assert r.account.id == first.account.id
    assert len(r.accounts.accounts) == 1
    assert r.account.refresh_token is not None
    assert r.account.refresh_token.get_secret_value() == "rt-0000000002"


def test_login_with_a_stored_label_is_a_relogin() -> None:
    first = merge_login(AccountsFile(), tokens(1), NOW, "work")
    dead = first.accounts.edit(
        first.account.id,
        lambda a: a.model_copy(update={"needs_relogin": True, "relogin_reason": "x"}),
    )
    r = merge_login(dead, tokens(2), NOW, "work")
    assert r.action == "updated"
    assert r.account.id == first.account.id
    assert not r.account.needs_relogin
    assert r.account.relogin_reason is None


def test_a_label_of_someone_else_is_not_merged() -> None:
    first = merge_login(AccountsFile(), tokens(1, "ann@x.org"), NOW, "work")
    r = merge_login(first.accounts, tokens(2, "bob@x.org"), NOW, "work")
    assert r.action == "added"
    assert r.account.label == "work-1"
    assert r.note is not None
    assert "ann@x.org" in r.note


def test_relogin_of_a_disabled_account_says_so() -> None:
    first = merge_login(AccountsFile(), tokens(1), NOW, "work")
    off = first.accounts.edit(
        first.account.id, lambda a: a.model_copy(update={"disabled": True})
    )
    r = merge_login(off, tokens(2), NOW, "work")
    assert r.account.disabled
    assert r.note is not None
    assert "qwen-oauth enable work" in r.note


# --- showing a login ------------------------------------------------------------------


class _Browser(webbrowser.BaseBrowser):
    def open(self, url: str, new: int = 0, autoraise: bool = True) -> bool:
        return True


@pytest.mark.parametrize(
    ("platform", "environ", "browser", "expected"),
    [
        ("linux", {}, "firefox", False),
        ("linux", {"DISPLAY": ":0"}, "firefox", True),
        ("linux", {"WAYLAND_DISPLAY": "wayland-0"}, "firefox", True),
        ("linux", {"DISPLAY": ":0"}, "lynx", False),
        ("linux", {"DISPLAY": ":0"}, None, False),
        ("darwin", {"SSH_CONNECTION": "1 2 3 4"}, "safari", False),
        ("darwin", {}, "safari", True),
        ("win32", {}, "windows-default", True),
    ],
)
def test_browser_available(
    monkeypatch: pytest.MonkeyPatch,
    platform: str,
    environ: dict[str, str],
    browser: str | None,
    expected: bool,
) -> None:
    def get(using: str | None = None) -> webbrowser.BaseBrowser:
        if browser is None:
            raise webbrowser.Error("could not locate runnable browser")
        return _Browser(browser)

    monkeypatch.setattr(webbrowser, "get", get)
    assert browser_available(environ, platform) is expected


def test_render_qr_draws_blocks() -> None:
    code = render_qr("http://127.0.0.1:1/authorize?user_code=12345678")
    assert code is not None
    assert len(code.splitlines()) > 10
    assert set(code) & set("█▀▄")


def test_countdown_on_a_pipe_prints_a_line_a_minute(env: Env) -> None:
    countdown = Countdown(env, live=False)
    for left in (299.5, 298, 260, 239, 200, 179):
        countdown(PollProgress(left, 2.0))
    countdown(PollProgress(170, 3.0, "slow_down", "polling every 3 s"))
    lines = out(env).splitlines()
    assert lines[:3] == [
        "Waiting for approval (4m 59s left)...",
        "Waiting for approval (3m 59s left)...",
        "Waiting for approval (2m 59s left)...",
    ]
    assert "poll less often: polling every 3 s" in lines[3]
    assert "\r" not in out(env)


def test_countdown_on_a_terminal_redraws_one_line(env: Env) -> None:
    countdown = Countdown(env, live=True)
    countdown(PollProgress(65.2, 2.0))
    countdown(PollProgress(65.1, 2.0))  # same second: not redrawn
    countdown(PollProgress(64.0, 2.0))
    countdown.clear()
    text = out(env)
    assert text.count("\r\033[KWaiting for approval… 1:05 left") == 1
    assert "1:04 left" in text
    assert text.endswith("\r\033[K")


# --- login in-process -----------------------------------------------------------------


def test_login_in_process(env: Env, fake: FakeQwenOAuth) -> None:
    assert cli(env, "login", "--no-browser", "--label", "me") == 0
    text = out(env)
    assert "/authorize?user_code=" in text
    assert "Added account 'me'" in text
    assert "█" in text  # the QR code
    (account,) = stored(env).accounts
    assert account.label == "me"
    assert account.access_token is not None
    assert fake.is_valid_access_token(account.access_token.get_secret_value())
    for token in fake.issued:
        assert token not in text


# --- accounts -------------------------------------------------------------------------


def _account(label: str, kind: Any = "oauth", **over: Any) -> Account:
    fields: dict[str, Any] = {
        "id": f"acct_{label}",
        "label": label,
        "kind": kind,
        "access_token": SecretStr(f"secret-access-{label}"),
        "refresh_token": SecretStr(f"secret-refresh-{label}")
        if kind == "oauth"
        else None,
        "expires_at": time.time() + 7200 if kind == "oauth" else None,
        "added_at": 0,
        "updated_at": 0,
    }
    fields.update(over)
    return Account(**fields)


def seed(env: Env, *accounts: Account) -> None:
    env.store.write(AccountsFile(accounts=accounts))


def test_accounts_table_shows_state_and_never_a_token(env: Env) -> None:
    seed(
        env,
        _account("good"),
        _account("dead", needs_relogin=True, relogin_reason="invalid_grant"),
        _account("off", disabled=True),
        _account("key", "key"),
    )
    assert cli(env, "accounts") == 0
    text = out(env)
    header = text.splitlines()[0].split()
    for column in ("label", "kind", "state", "health", "bucket", "expiry"):
        assert column in header
    assert "needs re-login" in text
    assert "disabled" in text
    assert "in 1h 59m" in text or "in 2h 00m" in text
    assert (
        "dead needs a new login (invalid_grant): run qwen-oauth login --label dead"
        in text
    )
    assert "does not say how many are left" in text
    assert "secret-" not in text


def test_accounts_when_there_are_none(env: Env) -> None:
    assert cli(env, "accounts") == 0
    assert "qwen-oauth login" in out(env)


# --- remove / disable / enable --------------------------------------------------------


def test_remove_disable_enable_by_label_or_id(env: Env) -> None:
    seed(env, _account("a"), _account("b", needs_relogin=True))
    assert cli(env, "disable", "a") == 0
    assert stored(env).find("a").disabled  # type: ignore[union-attr]
    assert cli(env, "enable", "acct_a") == 0
    assert not stored(env).find("a").disabled  # type: ignore[union-attr]
    assert cli(env, "enable", "b") == 0
    assert "qwen-oauth login --label b" in out(env)
    assert cli(env, "remove", "acct_b") == 0
    assert [a.label for a in stored(env).accounts] == ["a"]


def test_unknown_account_is_an_error_naming_the_known_ones(env: Env) -> None:
    seed(env, _account("a"))
    with pytest.raises(QwenError, match=r"no account 'zz' \(accounts: a\)"):
        cli(env, "remove", "zz")


# --- add-key --------------------------------------------------------------------------


def test_add_key_from_the_environment(env: Env) -> None:
    env.environ = {"QWEN_API_KEY": "sk-from-env-123456"}
    assert cli(env, "add-key", "--label", "paid") == 0
    (account,) = stored(env).accounts
    assert account.kind == "key"
    assert account.label == "paid"
    assert account.access_token is not None
    assert account.access_token.get_secret_value() == "sk-from-env-123456"
    assert account.base_url == "https://dashscope.aliyuncs.com/compatible-mode/v1"
    assert "sk-from-env" not in out(env)


def test_add_key_from_stdin_then_update_in_place(env: Env) -> None:
    env.stdin = io.StringIO("sk-from-stdin-123456\n")
    assert cli(env, "add-key", "--base-url", "https://coding.example/v1/") == 0
    env.stdin = io.StringIO("sk-from-stdin-123456\n")
    assert cli(env, "add-key", "--base-url", "https://other.example/v1") == 0
    (account,) = stored(env).accounts
    assert account.label == "key"
    assert account.base_url == "https://other.example/v1"
    assert "Updated API-key account 'key'" in out(env)


@pytest.mark.parametrize(
    ("stdin", "words"),
    [("", "no API key given"), ("sk with spaces\n", "does not look")],
)
def test_add_key_rejects_bad_input(env: Env, stdin: str, words: str) -> None:
    env.stdin = io.StringIO(stdin)
    with pytest.raises(QwenError, match=words):
        cli(env, "add-key")
    assert not env.paths.accounts.exists()


def test_add_key_rejects_a_bad_base_url(env: Env) -> None:
    env.stdin = io.StringIO("sk-123456789\n")
    with pytest.raises(QwenError, match="http"):
        cli(env, "add-key", "--base-url", "ftp://x")


def test_add_key_never_takes_the_key_as_an_argument() -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["add-key", "sk-on-the-command-line"])
    assert info.value.code == 2


# --- import-qwen-code -----------------------------------------------------------------


def write_creds(home: Path, **over: Any) -> Path:
    creds = {
        "access_token": "qc-access-1234567",
        "refresh_token": "qc-refresh-1234567",
        "token_type": "Bearer",
        "resource_url": "portal.qwen.ai",
        "expiry_date": 1_900_000_000_123,
    }
    creds.update(over)
    path = home / ".qwen" / "oauth_creds.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(creds))
    return path


def test_import_qwen_code(env: Env, home: Path) -> None:
    write_creds(home)
    assert cli(env, "import-qwen-code") == 0
    (account,) = stored(env).accounts
    assert account.label == "qwen-code"
    assert account.kind == "oauth"
    assert account.expires_at == pytest.approx(1_900_000_000.123)
    assert account.resource_url == "portal.qwen.ai"
    assert "share one login" in out(env)
    assert "qc-access" not in out(env)
    # importing the same login again updates it
    write_creds(home, access_token="qc-access-7654321")
    assert cli(env, "import-qwen-code") == 0
    (again,) = stored(env).accounts
    assert again.id == account.id
    assert again.access_token is not None
    assert again.access_token.get_secret_value() == "qc-access-7654321"


def test_import_qwen_code_errors(env: Env, home: Path) -> None:
    with pytest.raises(QwenError, match="does not exist"):
        cli(env, "import-qwen-code")
    write_creds(home, refresh_token="")
    with pytest.raises(QwenError, match="no refresh_token"):
        cli(env, "import-qwen-code")
    path = write_creds(home)
    path.write_text("{not json")
    with pytest.raises(QwenError, match="not valid JSON"):
        cli(env, "import-qwen-code", "--file", str(path))


def test_import_without_expiry_refreshes_on_first_use(env: Env, home: Path) -> None:
    write_creds(home, expiry_date=None)
    assert cli(env, "import-qwen-code", "--label", "qc") == 0
    (account,) = stored(env).accounts
    assert account.is_expiring(time.time(), 0)


# --- refresh in-process ---------------------------------------------------------------


def _live(fake: FakeQwenOAuth, label: str) -> tuple[Account, str]:
    """An account with live tokens at the fake, and its refresh token."""
    tokens = fake.issue_tokens()
    account = _account(
        label,
        access_token=SecretStr(tokens["access_token"]),
        refresh_token=SecretStr(tokens["refresh_token"]),
    )
    return account, tokens["refresh_token"]


def test_refresh_all_and_one(env: Env, fake: FakeQwenOAuth) -> None:
    seed(
        env,
        _live(fake, "live")[0],
        _account("dead"),
        _account("key", "key"),
    )
    assert cli(env, "refresh") == EXIT_FAILURE
    text = out(env)
    assert "live: refreshed; the token is valid for 6h 00m." in text
    assert "dead: account 'dead' needs a new login" in text
    assert "qwen-oauth login --label dead" in text
    assert fake.counts["refresh"] == 2
    dead = stored(env).find("dead")
    assert dead is not None
    assert dead.needs_relogin
    assert cli(env, "refresh", "live") == 0
    assert cli(env, "refresh", "key") == 0
    assert "keys are not refreshed" in out(env)


def test_refresh_outwaits_a_server_slower_than_refresh_seconds(
    env: Env, fake: FakeQwenOAuth
) -> None:
    """``timeouts.refresh_seconds`` bounds how long a proxied request waits, not
    the refresh: cut off, a refresh the server already answered with a rotated
    refresh token would leave only the retired one in the file."""
    env.config = env.config.model_copy(
        update={
            "timeouts": env.config.timeouts.model_copy(update={"refresh_seconds": 0.2})
        }
    )
    live, old_refresh = _live(fake, "live")
    seed(env, live)
    fake.refresh_delay = 0.6
    assert cli(env, "refresh", "live") == 0, out(env)
    assert "live: refreshed" in out(env)
    saved = stored(env).find("live")
    assert saved is not None
    assert saved.refresh_token is not None
    assert saved.refresh_token.get_secret_value() != old_refresh
    assert saved.refresh_token.get_secret_value() in fake.issued


# --- main: exit codes and errors ------------------------------------------------------


@pytest.fixture
def os_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake: FakeQwenOAuth, home: Path
) -> Path:
    """main() reads the real environment: point it at temp folders."""
    for var in ("QWEN_DEBUG", "QWEN_API_KEY", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("QWEN_OAUTH_BASE_URL", fake.url)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "xdg" / "opencode" / "qwen-auth-accounts.json"


def test_main_corrupt_file_is_one_line_without_traceback(
    os_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    os_env.parent.mkdir(parents=True)
    os_env.write_text("{broken")
    os_env.chmod(0o600)
    assert main(["accounts"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("qwen-oauth: error: ")
    assert err.count("\n") == 1
    assert "Traceback" not in err
    monkeypatch.setenv("QWEN_DEBUG", "1")
    assert main(["accounts"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_main_bad_config_is_an_error(
    os_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QWEN_REFRESH_WINDOW_SECONDS", "soon")
    assert main(["accounts"]) == 2
    assert "QWEN_REFRESH_WINDOW_SECONDS" in capsys.readouterr().err


def test_main_usage_errors_exit_2(os_env: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


def test_help_is_written_for_a_new_user(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for words in ("qwen-oauth login", "add-key", "import-qwen-code", "QWEN_DEBUG"):
        assert words in text
    with pytest.raises(SystemExit):
        main(["login", "--help"])
    assert "--no-browser" in capsys.readouterr().out
