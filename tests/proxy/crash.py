"""SIGKILL ``mitmdump`` again and again while it writes state; check the files.

Shared by ``tests/proxy/test_e2e_crash.py`` (a short run) and ``scripts/soak``
(a long one). One cycle: start ``mitmdump`` with the addon on the same state
folder, let it serve (a few clients in threads), refresh tokens (they expire
within a second, so each request may refresh, and every refresh rotates the
refresh token and writes the accounts file), save its rotation state, while
``qwen-oauth add-key`` adds accounts to the same file; then SIGKILL it. The
kill comes, in turn (:data:`MOMENTS`): at a random moment; the instant the
process holds a temporary state file open (a write is under way); or at rest,
with the clients paused, once the refreshes it made at start are answered and
none follows for a moment. After each kill:

- the accounts file and the tracker-state file parse (a torn write would not);
- both are 0600, and so is any temporary file a killed write left behind;
- no account is lost: the seeded ones and every one the CLI reported added;
- no account needs a re-login, and each OAuth account's stored refresh token is
  the newest the server issued for its login; or, except at rest, the one
  before it when the server's answer came less than ``GRACE`` seconds before
  the kill (the server had rotated it and the process died before saving it:
  nothing can save that; the account is logged in again and the case counted).
  At rest every rotation must be saved: the proxy saves a new refresh token
  before it uses the new access token, and nothing would save it later.

At the end, after one more write (by the CLI), no temporary file of the
accounts file is left: each write removes what killed ones left.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from qwen_oauth_mitm.accounts import Account, AccountsFile
from qwen_oauth_mitm.localserver import LocalServer
from qwen_oauth_mitm.oauth.fake_server import FakeQwenOAuth, _Session
from qwen_oauth_mitm.paths import StatePaths
from qwen_oauth_mitm.portal import FakePortal
from qwen_oauth_mitm.rotation.state import TrackerState
from qwen_oauth_mitm.store import accounts_file

from .harness import (
    mitmdump_args,
    mitmdump_env,
    oauth_account,
    wait_for_port,
    write_accounts,
)

ROOT = Path(__file__).resolve().parents[2]
QWEN_OAUTH = ROOT / ".venv" / "bin" / "qwen-oauth"
GRACE = 0.5
"""Seconds between the server's refresh answer and the kill within which an
unsaved rotation is the process's bad luck, not a lost write."""
REST = 0.3
"""Seconds without a refresh after which a proxy with no traffic is at rest."""
MOMENTS = ("at random", "at a write", "at rest")
"""When each cycle's kill comes, in turn."""
LIFETIME = 4.0
WINDOW = 3
"""Tokens live 4 s and are refreshed in their last 3 s: about every second
of use, so most lives of the proxy rotate every account's refresh token."""


class ChainOAuth(FakeQwenOAuth):
    """A fake OAuth server that remembers each refresh token's successor."""

    def __init__(self, **knobs: Any) -> None:
        super().__init__(**knobs)
        self.successor: dict[str, tuple[str, float]] = {}
        """Refresh token -> (the one that replaced it, when it was issued)."""

    def _tokens_for(self, session: _Session, *, rotate: bool) -> dict[str, Any]:
        old = session.refresh_token
        answer = super()._tokens_for(session, rotate=rotate)
        if rotate and old:
            self.successor[old] = (session.refresh_token, time.time())
        return answer

    def live(self, refresh_token: str) -> bool:
        with self._lock:
            return refresh_token in self._sessions


@dataclass
class CrashReport:
    kills: int = 0
    mid_write: int = 0
    """Kills that left a temporary state file behind (a write was cut)."""
    served: int = 0
    refreshes: int = 0
    added: int = 0
    unsaved: int = 0
    """Refreshes the server answered that the process died before saving."""
    leftovers: int = 0
    """Temporary files of the accounts file left after a last, normal write."""
    violations: list[str] = field(default_factory=list)


@dataclass
class _Shared:
    port: int = 0
    stop: bool = False
    paused: bool = False
    served: int = 0
    added: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _client_loop(shared: _Shared, ca: Path, n: int) -> None:
    """Requests through whichever proxy runs; failures while it is down are fine."""
    client: httpx.Client | None = None
    port = 0
    i = 0
    while not shared.stop:
        if shared.paused:
            time.sleep(0.01)
            continue
        if shared.port != port or client is None:
            if client is not None:
                client.close()
            port = shared.port
            client = httpx.Client(
                proxy=f"http://127.0.0.1:{port}",
                verify=ssl.create_default_context(cafile=str(ca)),
                timeout=5.0,
                trust_env=False,
            )
        i += 1
        path, body = (
            (
                "chat/completions",
                {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            )
            if (i + n) % 2
            else ("responses", {"model": "m", "input": "hi", "stream": True})
        )
        try:
            r = client.post(f"https://portal.qwen.ai/v1/{path}", json=body)
            if r.status_code == 200:
                with shared.lock:
                    shared.served += 1
        except httpx.HTTPError:
            time.sleep(0.02)
    if client is not None:
        client.close()


def _add_key(portal: FakePortal, env: dict[str, str], n: int) -> bool:
    """``qwen-oauth add-key --label cli<n>``; True when it says it added it."""
    key = f"crash-key-{n:04d}-0123456789"
    portal.keys.add(key)
    run = subprocess.run(
        [str(QWEN_OAUTH), "add-key", "--label", f"cli{n}"],
        env={**env, "QWEN_API_KEY": key},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if run.returncode != 0:
        raise RuntimeError(f"add-key failed: {run.stderr.strip()[-300:]}")
    return True


def _cli_loop(shared: _Shared, portal: FakePortal, env: dict[str, str]) -> None:
    """``qwen-oauth add-key`` again and again; remembers the accounts it added."""
    n = 0
    while not shared.stop:
        n += 1
        try:
            _add_key(portal, env, n)
        except RuntimeError as e:
            with shared.lock:
                shared.errors.append(str(e))
            continue
        with shared.lock:
            shared.added.append(f"cli{n}")
        time.sleep(0.3)  # leave the CPU to mitmdump's restarts


def _watch_for_write(pid: int, fired: threading.Event, until: float) -> None:
    """Set ``fired`` the moment process ``pid`` holds a temporary state file open
    (a write is under way: created, not yet renamed into place)."""
    fds = Path(f"/proc/{pid}/fd")
    while time.monotonic() < until and not fired.is_set():
        with contextlib.suppress(OSError):
            for fd in os.listdir(fds):
                with contextlib.suppress(OSError):
                    if os.readlink(fds / fd).endswith(".tmp"):
                        fired.set()
                        return
        time.sleep(0.001)


def _wait_for_service(shared: _Shared, before: int) -> None:
    """Until a client got an answer from this life of the proxy (at most 10 s)."""
    deadline = time.monotonic() + 10.0
    while shared.served == before and time.monotonic() < deadline:
        time.sleep(0.01)


def _wait_for_rest(fake: ChainOAuth, before: int) -> None:
    """Until the proxy's refreshes at start are over: one was answered, then
    none for ``REST`` seconds (at most 3 s in all)."""
    deadline = time.monotonic() + 3.0
    count, changed = before, time.monotonic()
    while time.monotonic() < deadline:
        now = fake.counts["refresh"]
        if now != count:
            count, changed = now, time.monotonic()
        elif count > before and time.monotonic() - changed > REST:
            return
        time.sleep(0.01)


def _quiet_on_hang_up(server: LocalServer) -> None:
    """No traceback on stderr when a killed mitmdump hangs up on the server."""
    inner = server._server
    default = inner.handle_error

    def handle_error(request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            default(request, client_address)

    inner.handle_error = handle_error  # type: ignore[method-assign]


def seed(fake: ChainOAuth, paths: StatePaths, n: int) -> list[Account]:
    accounts = [
        oauth_account(fake, f"crash{i}", expires_in=fake.token_lifetime)
        for i in range(1, n + 1)
    ]
    write_accounts(paths, accounts)
    return accounts


def relogin(fake: ChainOAuth, paths: StatePaths, account_id: str) -> None:
    """What ``qwen-oauth login`` does for a lost login: new tokens, same account."""
    tokens = fake.issue_tokens()

    def change(f: AccountsFile) -> AccountsFile:
        return f.edit(
            account_id,
            lambda a: a.model_copy(
                update={
                    "access_token": SecretStr(str(tokens["access_token"])),
                    "refresh_token": SecretStr(str(tokens["refresh_token"])),
                    "expires_at": time.time() + fake.token_lifetime,
                    "needs_relogin": False,
                    "relogin_reason": None,
                }
            ),
        )

    accounts_file(paths.accounts).update(change)


def check_after_kill(
    fake: ChainOAuth,
    paths: StatePaths,
    expected: set[str],
    killed_at: float,
    grace: float,
    report: CrashReport,
    cycle: int,
) -> None:
    def fail(what: str) -> None:
        report.violations.append(f"kill {cycle}: {what}")

    folder = paths.accounts.parent
    for path in [paths.accounts, paths.tracker_state, *folder.glob(".*.tmp")]:
        if path.exists() and stat.S_IMODE(path.stat().st_mode) != 0o600:
            fail(f"{path.name} is {stat.S_IMODE(path.stat().st_mode):o}, not 600")
    if paths.tracker_state.exists():
        try:
            TrackerState.model_validate_json(paths.tracker_state.read_bytes())
        except ValueError as e:
            fail(f"the tracker file does not parse: {type(e).__name__}")
    try:
        stored = AccountsFile.model_validate_json(paths.accounts.read_bytes())
    except (OSError, ValueError) as e:
        fail(f"the accounts file does not parse: {type(e).__name__}")
        return
    labels = {a.label for a in stored.accounts}
    if missing := expected - labels:
        fail(f"accounts lost: {sorted(missing)}")
    for account in stored.accounts:
        if account.needs_relogin:
            fail(f"{account.label} needs a re-login: {account.relogin_reason}")
        if account.kind != "oauth" or account.refresh_token is None:
            continue
        held = account.refresh_token.get_secret_value()
        if fake.live(held):
            continue
        newer, issued = fake.successor.get(held, ("", 0.0))
        if fake.live(newer) and killed_at - issued < grace:
            report.unsaved += 1
            relogin(fake, paths, account.id)
        else:
            fail(
                f"{account.label} holds a refresh token the server retired "
                f"{killed_at - issued:.2f} s before the kill (a lost write)"
            )
            relogin(fake, paths, account.id)


def crash_cycles(
    workdir: Path,
    *,
    kills: int,
    seed_value: int = 1,
    oauth_accounts: int = 3,
    clients: int = 3,
    on_cycle: Callable[[int], None] | None = None,
) -> CrashReport:
    """Run ``kills`` cycles (see the module docstring); the report says how it went."""
    rng = random.Random(seed_value)
    report = CrashReport()
    paths = StatePaths(workdir / "config" / "opencode")
    confdir = workdir / "mitm"
    confdir.mkdir(parents=True, exist_ok=True)
    with ChainOAuth(token_lifetime=LIFETIME) as fake, FakePortal(fake) as portal:
        for server in (fake, portal):
            _quiet_on_hang_up(server)
        seeded = seed(fake, paths, oauth_accounts)
        env = mitmdump_env(workdir / "config", fake, portal)
        args = mitmdump_args(
            confdir,
            [
                "--set", "termlog_verbosity=info",
                "--set", f"qwen_refresh_window_seconds={WINDOW:g}",
                "--set", "qwen_token_bucket_regeneration_rate_per_minute=100000",
            ],
        )  # fmt: skip
        shared = _Shared()
        threads: list[threading.Thread] = []
        try:
            for cycle in range(1, kills + 1):
                log = workdir / f"mitmdump-{cycle % 2}.log"
                stale = set(paths.accounts.parent.glob(".*.tmp"))
                # At rest: no client traffic, so only the start's proactive refresh
                # rotates tokens, and nothing later would save what it did not.
                shared.paused = MOMENTS[cycle % len(MOMENTS)] == "at rest"
                refreshes_before = fake.counts["refresh"]
                served_before = shared.served
                with log.open("wb") as out:
                    process = subprocess.Popen(
                        args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir
                    )
                try:
                    shared.port = wait_for_port(log, process, timeout=30)
                    if not threads:  # the CA exists once mitmdump has started
                        ca = confdir / "mitmproxy-ca-cert.pem"
                        threads = [
                            threading.Thread(
                                target=_client_loop, args=(shared, ca, i), daemon=True
                            )
                            for i in range(clients)
                        ]
                        threads.append(
                            threading.Thread(
                                target=_cli_loop,
                                args=(shared, portal, env),
                                daemon=True,
                            )
                        )
                        for t in threads:
                            t.start()
                    how = MOMENTS[cycle % len(MOMENTS)]
                    if how == "at a write":
                        # Up to 1.5 s for a write to start; kill the moment it does.
                        deadline = time.monotonic() + 1.5
                        _watch_for_write(process.pid, threading.Event(), deadline)
                    elif how == "at rest":
                        _wait_for_rest(fake, refreshes_before)
                    else:
                        # Once it serves (it has started for good), then at random.
                        _wait_for_service(shared, served_before)
                        time.sleep(rng.uniform(0.0, 0.5))
                    os.kill(process.pid, signal.SIGKILL)
                    killed_at = time.time()
                finally:
                    if process.poll() is None:
                        process.kill()
                    process.wait()
                report.kills += 1
                if set(paths.accounts.parent.glob(".*.tmp")) - stale:
                    report.mid_write += 1
                with shared.lock:
                    expected = {a.label for a in seeded} | set(shared.added)
                grace = 0.0 if shared.paused else GRACE
                check_after_kill(fake, paths, expected, killed_at, grace, report, cycle)
                if on_cycle is not None:
                    on_cycle(cycle)
        finally:
            shared.stop = True
            for t in threads:
                t.join(timeout=30)
        # Killed writes leave their temporary files; the next write (here the
        # CLI's) must remove them, or each such kill leaves a copy of the secrets.
        _add_key(portal, env, 9999)
        report.leftovers = len(list(paths.accounts.parent.glob(".*accounts*.tmp")))
        report.served = shared.served
        report.added = len(shared.added)
        report.refreshes = fake.counts["refresh"]
        report.violations += shared.errors
    return report
