"""Files we create are 0600 and a folder we create 0700, from the real CLI and the
real proxy; a looser file is tightened with a warning.

Both run under a usual umask (022), so a file created without an explicit mode
would be 0644 and the tests would see it.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.cli.run import run_cli
from tests.proxy.harness import oauth_account, run_mitmdump, write_accounts

from qwen_oauth_mitm.oauth.fake_server import FakeQwenOAuth
from qwen_oauth_mitm.paths import StatePaths
from qwen_oauth_mitm.portal import FakePortal

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(60),
    pytest.mark.skipif(os.name != "posix", reason="POSIX file modes"),
]


@pytest.fixture(autouse=True)
def _usual_umask() -> Iterator[None]:
    previous = os.umask(0o022)  # the children inherit it
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def modes(folder: Path) -> dict[str, int]:
    return {p.name: mode(p) for p in sorted(folder.iterdir())}


def test_the_cli_creates_a_private_folder_and_files(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_")}
    environ.update(XDG_CONFIG_HOME=str(tmp_path / "xdg"), HOME=str(tmp_path))

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return run_cli(list(args), environ, stdin=stdin, timeout=30)

    added = cli("add-key", "--label", "plan", stdin="sk-plan-key-0123456789\n")
    assert added.returncode == 0, added.stderr
    folder = tmp_path / "xdg" / "opencode"
    assert mode(folder) == 0o700
    assert modes(folder) == {
        "qwen-auth-accounts.json": 0o600,
        "qwen-auth-accounts.json.lock": 0o600,
    }
    (folder / "qwen-auth-accounts.json").chmod(0o644)
    listed = cli("accounts")
    assert listed.returncode == 0, listed.stderr
    assert "readable by others (mode 644); set it to 0600" in listed.stderr
    assert mode(folder / "qwen-auth-accounts.json") == 0o600


@pytest.mark.slow
def test_the_proxy_writes_private_files_and_tightens_its_log_file(
    tmp_path: Path, fake: FakeQwenOAuth, portal: FakePortal, paths: StatePaths
) -> None:
    write_accounts(paths, [oauth_account(fake, "work", expires_in=-60)])
    for lock in paths.accounts.parent.glob("*.lock"):
        lock.unlink()  # the proxy's own locks, not the test's
    log_file = tmp_path / "qwen.log"
    log_file.write_text("")
    log_file.chmod(0o644)
    options = ["--set", f"qwen_log_file={log_file}"]
    with (
        run_mitmdump(tmp_path, fake, portal, options) as proxy,
        proxy.client() as client,
    ):
        client.responses.create(model="coder-model", input="hi")
    assert fake.counts["refresh"] == 1  # the accounts file was rewritten
    assert modes(paths.accounts.parent) == {
        "qwen-auth-accounts.json": 0o600,
        "qwen-auth-accounts.json.lock": 0o600,
        "qwen-auth-tracker-state.json": 0o600,
        "qwen-auth-tracker-state.json.lock": 0o600,
    }
    assert mode(log_file) == 0o600
    assert f"{log_file} was readable by others (mode 644)" in proxy.output()
