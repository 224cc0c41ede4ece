"""The real ``qwen-oauth`` as a subprocess against the fake OAuth server."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qwen_oauth_mitm.oauth.fake_server import FakeQwenOAuth

from .run import run_cli

pytestmark = pytest.mark.e2e


def stored(path: Path) -> list[dict[str, object]]:
    data = json.loads(path.read_text())
    accounts = data["accounts"]
    assert isinstance(accounts, list)
    return accounts


def assert_no_tokens(fake: FakeQwenOAuth, *texts: str) -> None:
    assert fake.issued, "the fake issued no token: the test would prove nothing"
    for text in texts:
        for token in fake.issued:
            assert token not in text


def test_two_logins_store_two_accounts_0600(
    fake: FakeQwenOAuth, cli_environ: dict[str, str], accounts_path: Path
) -> None:
    fake.pending_polls = 2
    first = run_cli(["login", "--no-browser"], cli_environ)
    assert first.returncode == 0, first.stderr
    assert f"{fake.url}/authorize?user_code=" in first.stdout
    assert "Code: " in first.stdout
    assert "█" in first.stdout  # the QR code
    assert "Waiting for approval" in first.stdout
    assert "Added account 'account-1'" in first.stdout
    second = run_cli(["login", "--no-browser"], cli_environ)
    assert second.returncode == 0, second.stderr
    assert "2 accounts stored" in second.stdout
    accounts = stored(accounts_path)
    assert [a["label"] for a in accounts] == ["account-1", "account-2"]
    assert len({a["id"] for a in accounts}) == 2
    for a in accounts:
        assert fake.is_valid_access_token(str(a["access_token"]))
        assert a["kind"] == "oauth"
        assert isinstance(a["expires_at"], float)
    assert stat.S_IMODE(accounts_path.stat().st_mode) == 0o600
    assert fake.counts["device_code"] == 2
    assert_no_tokens(fake, first.stdout, first.stderr, second.stdout, second.stderr)


def test_relogin_of_the_same_person_updates_in_place(
    fake: FakeQwenOAuth, cli_environ: dict[str, str], accounts_path: Path
) -> None:
    fake.identity = "ann@example.com"
    assert run_cli(["login", "--no-browser", "--no-qr"], cli_environ).returncode == 0
    again = run_cli(["login", "--no-browser", "--no-qr"], cli_environ)
    assert again.returncode == 0, again.stderr
    assert "Updated account 'ann'" in again.stdout
    assert len(stored(accounts_path)) == 1


def test_slow_down(fake: FakeQwenOAuth, cli_environ: dict[str, str]) -> None:
    fake.slow_down_polls = 2
    result = run_cli(["login", "--no-browser", "--no-qr"], cli_environ)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("asked us to poll less often") == 2


@pytest.mark.parametrize(
    ("setup", "words"),
    [
        (
            {"device_expires_in": 0.5, "outcome": "wait"},
            "Device code expired: complete the browser login within 5 minutes",
        ),
        ({"outcome": "expire"}, "Device code expired"),
        ({"outcome": "deny"}, "the login was denied in the browser"),
        ({"html_mode": True}, "the OAuth server answered with HTML, not JSON"),
    ],
)
def test_failed_logins_leave_the_store_alone(
    fake: FakeQwenOAuth,
    cli_environ: dict[str, str],
    accounts_path: Path,
    setup: dict[str, object],
    words: str,
) -> None:
    assert run_cli(["login", "--no-browser", "--no-qr"], cli_environ).returncode == 0
    before = accounts_path.read_bytes()
    for key, value in setup.items():
        setattr(fake, key, value)
    result = run_cli(["login", "--no-browser", "--no-qr"], cli_environ)
    assert result.returncode == 1
    assert words in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0  # one line
    assert accounts_path.read_bytes() == before


def test_ctrl_c_while_polling_changes_nothing(
    fake: FakeQwenOAuth, cli_environ: dict[str, str], accounts_path: Path
) -> None:
    assert run_cli(["login", "--no-browser", "--no-qr"], cli_environ).returncode == 0
    before = accounts_path.read_bytes()
    fake.outcome = "wait"
    proc = subprocess.Popen(
        [sys.executable, "-m", "qwen_oauth_mitm", "login", "--no-browser", "--no-qr"],
        env=cli_environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "Waiting for approval" in line:
            break
    polls = fake.counts["token_poll"]
    deadline = time.monotonic() + 10
    while fake.counts["token_poll"] < polls + 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # it is really polling
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "login cancelled" in err
    assert "Traceback" not in err
    assert accounts_path.read_bytes() == before


def test_no_token_in_any_output_of_login_refresh_and_accounts(
    fake: FakeQwenOAuth, cli_environ: dict[str, str], accounts_path: Path
) -> None:
    environ = {**cli_environ, "QWEN_DEBUG": "1"}  # the most verbose logging
    outputs: list[str] = []
    for args in (["login", "--no-browser"], ["refresh"], ["accounts"], ["refresh"]):
        result = run_cli(args, environ)
        assert result.returncode == 0, result.stderr
        outputs += [result.stdout, result.stderr]
    assert fake.counts["refresh"] == 2
    assert "HTTP Request: POST" in "".join(outputs)  # debug logging was on
    assert len(fake.issued) == 6  # login + two refreshes, access and refresh each
    assert_no_tokens(fake, *outputs)
    on_disk = stored(accounts_path)[0]
    assert on_disk["access_token"] in fake.issued  # ...yet the file holds them


def test_a_dead_refresh_token_marks_only_that_account(
    fake: FakeQwenOAuth, cli_environ: dict[str, str], accounts_path: Path
) -> None:
    for label in ("work", "home"):
        result = run_cli(
            ["login", "--no-browser", "--no-qr", "--label", label], cli_environ
        )
        assert result.returncode == 0, result.stderr
    work, _home = stored(accounts_path)
    fake.revoke(str(work["refresh_token"]))
    result = run_cli(["refresh"], cli_environ)
    assert result.returncode == 1
    assert "work: account 'work' needs a new login" in result.stdout
    assert "run: qwen-oauth login --label work" in result.stdout
    assert "home: refreshed" in result.stdout
    work2, home2 = stored(accounts_path)
    assert work2["needs_relogin"] is True
    assert "Invalid refresh token or client_id" in str(work2["relogin_reason"])
    assert home2["needs_relogin"] is False
    table = run_cli(["accounts"], cli_environ)
    assert "needs re-login" in table.stdout
    # the command we print brings it back
    fixed = run_cli(
        ["login", "--no-browser", "--no-qr", "--label", "work"], cli_environ
    )
    assert fixed.returncode == 0, fixed.stderr
    assert "Updated account 'work'" in fixed.stdout
    work3, _ = stored(accounts_path)
    assert work3["needs_relogin"] is False
    assert work3["id"] == work["id"]


def test_console_script_and_add_key_from_stdin(
    cli_environ: dict[str, str], accounts_path: Path
) -> None:
    script = Path(sys.executable).with_name("qwen-oauth")
    if not script.exists():
        pytest.skip("console script not installed in this interpreter's folder")
    result = subprocess.run(
        [str(script), "add-key", "--label", "paid"],
        env=cli_environ,
        input="sk-piped-key-12345\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "sk-piped" not in result.stdout + result.stderr
    (account,) = stored(accounts_path)
    assert account["kind"] == "key"
    assert account["access_token"] == "sk-piped-key-12345"
