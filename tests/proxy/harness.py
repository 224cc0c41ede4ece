"""E2E harness: a real ``mitmdump -s addon/qwen_addon.py`` subprocess, the fake
OAuth server and the stand-in portal on 127.0.0.1, and the ``openai`` SDK talking
to ``https://portal.qwen.ai/v1`` through the proxy (trusting its CA)."""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
from pydantic import SecretStr

from qwen_oauth_mitm.accounts import Account, AccountsFile
from qwen_oauth_mitm.oauth.fake_server import FakeQwenOAuth
from qwen_oauth_mitm.paths import StatePaths
from qwen_oauth_mitm.portal import FakePortal
from qwen_oauth_mitm.store import accounts_file

ROOT = Path(__file__).resolve().parents[2]
MITMDUMP = ROOT / ".venv" / "bin" / "mitmdump"
SCRIPT = ROOT / "addon" / "qwen_addon.py"
# Regular mode says "HTTP(S) proxy listening at", reverse mode "reverse proxy to ...
# listening at": both end in the address.
LISTENING = re.compile(rb"listening at \S*?:(\d+)")


def oauth_account(
    fake: FakeQwenOAuth, label: str, *, expires_in: float = 3600.0
) -> Account:
    return account_from_tokens(fake.issue_tokens(), label, expires_in=expires_in)


def account_from_tokens(
    tokens: Mapping[str, Any],
    label: str,
    *,
    expires_in: float,
    account_id: str | None = None,
    identity: str | None = None,
) -> Account:
    """The OAuth account a login that got ``tokens`` stores (id ``acct_<label>``
    unless given)."""
    now = time.time()
    return Account(
        id=account_id or f"acct_{label}",
        label=label,
        kind="oauth",
        access_token=SecretStr(str(tokens["access_token"])),
        refresh_token=SecretStr(str(tokens["refresh_token"])),
        expires_at=now + expires_in,
        resource_url="portal.qwen.ai",
        identity=identity,
        added_at=now,
        updated_at=now,
    )


def token_of(account: Account) -> str:
    assert account.access_token is not None
    return account.access_token.get_secret_value()


@dataclass
class Proxy:
    port: int
    confdir: Path
    log: Path
    process: subprocess.Popen[bytes]

    def client(self, *, timeout: float = 20.0) -> openai.OpenAI:
        http = openai.DefaultHttpxClient(
            proxy=f"http://127.0.0.1:{self.port}",
            verify=self.ssl_context(),
            timeout=timeout,
            trust_env=False,
        )
        return openai.OpenAI(
            base_url="https://portal.qwen.ai/v1",
            api_key="dummy-client-key",
            http_client=http,
            max_retries=0,
        )

    def http(self, *, timeout: float = 20.0) -> httpx.Client:
        return httpx.Client(
            proxy=f"http://127.0.0.1:{self.port}",
            verify=self.ssl_context(),
            timeout=timeout,
            trust_env=False,
        )

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(
            cafile=str(self.confdir / "mitmproxy-ca-cert.pem")
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stderr(self) -> str:
        """Its stderr, when started with ``stderr_apart``."""
        return self.log.with_name("mitmdump.err").read_text(errors="replace")


def write_accounts(paths: StatePaths, accounts: Sequence[Account]) -> None:
    accounts_file(paths.accounts).write(AccountsFile(accounts=tuple(accounts)))


def mitmdump_env(
    config_home: Path,
    fake: FakeQwenOAuth,
    portal: FakePortal | None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a mitmdump under test: no ``*_PROXY`` or ``QWEN_*``
    variable of ours, then ``extra``, then the fake servers' URLs (``portal``
    None: no ``QWEN_API_BASE_URL``) and ``config_home`` as ``XDG_CONFIG_HOME``."""
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().endswith("_PROXY") and not k.startswith("QWEN_")
    }
    environ.update(extra or {})
    environ.update(
        XDG_CONFIG_HOME=str(config_home),
        QWEN_OAUTH_BASE_URL=fake.url,
        PYTHONUNBUFFERED="1",  # the log is read while mitmdump runs
    )
    if portal is not None:
        environ["QWEN_API_BASE_URL"] = portal.url
    return environ


def mitmdump_args(
    confdir: Path, options: Sequence[str] = (), *, script: Path | None = SCRIPT
) -> list[str]:
    """``mitmdump`` on a free loopback port with ``script`` (None: no addon)."""
    return [
        str(MITMDUMP),
        "--listen-host", "127.0.0.1",
        "--listen-port", "0",
        "--set", f"confdir={confdir}",
        "--set", "connection_strategy=lazy",
        *(["-s", str(script)] if script is not None else []),
        *options,
    ]  # fmt: skip


@contextmanager
def run_mitmdump(
    tmp: Path,
    fake: FakeQwenOAuth,
    portal: FakePortal | None,
    options: Sequence[str] = (),
    *,
    wait: bool = True,
    env: Mapping[str, str] | None = None,
    stderr_apart: bool = False,
) -> Iterator[Proxy]:
    """mitmdump with the addon; its stdout (and stderr, unless ``stderr_apart``:
    then ``<tmp>/mitmdump.err``) in ``<tmp>/mitmdump.log``. Terminal log at debug
    unless ``options`` set ``termlog_verbosity``. ``portal`` None: no ``base_url``
    (each account's own API host, as in production)."""
    confdir = tmp / "mitm"
    confdir.mkdir(exist_ok=True)
    log = tmp / "mitmdump.log"
    environ = mitmdump_env(tmp / "config", fake, portal, env)
    args = mitmdump_args(confdir, options)
    # Defaults unless a test sets them (one option given twice is an error).
    if not any(o.startswith("termlog_verbosity=") for o in options):
        args += ["--set", "termlog_verbosity=debug"]
    if not any(o.startswith("qwen_proactive_refresh=") for o in options):
        # Off unless a test wants it: refresh counts must be the requests' own.
        args += ["--set", "qwen_proactive_refresh=false"]
    with log.open("wb") as out, (tmp / "mitmdump.err").open("wb") as err:
        process = subprocess.Popen(
            args,
            stdout=out,
            stderr=err if stderr_apart else subprocess.STDOUT,
            env=environ,
            cwd=tmp,
        )
    try:
        port = wait_for_port(log, process) if wait else 0
        yield Proxy(port, confdir, log, process)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_for_port(
    log: Path, process: subprocess.Popen[bytes], timeout: float = 20
) -> int:
    """The port from mitmdump's "listening at" line in ``log``, once it appears."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = LISTENING.search(log.read_bytes())
        if m:
            return int(m[1])
        if process.poll() is not None:
            raise AssertionError(f"mitmdump exited:\n{log.read_text()}")
        time.sleep(0.05)
    raise AssertionError(f"mitmdump did not start:\n{log.read_text()}")
