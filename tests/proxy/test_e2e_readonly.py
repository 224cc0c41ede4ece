"""End to end: the state folder turns read-only while ``mitmdump`` serves.

Neither the rotation state nor a refreshed (rotated) login can be written then.
The proxy must keep serving from memory, log each failure once (not once per
request), leave the old files as they were, and write both again, without a
restart, once the folder is writable.

Read-only for real: ``chmod 0500`` on the folder, or, as root (whom modes do not
stop), the immutable attribute (``chattr +i``: no file can be created, renamed or
removed in it, even by root; files in it stay readable). Where neither works the
test is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from qwen_oauth_mitm.oauth.fake_server import FakeQwenOAuth
from qwen_oauth_mitm.paths import StatePaths
from qwen_oauth_mitm.portal import FakePortal, Fault
from qwen_oauth_mitm.store import accounts_file

from .harness import Proxy, oauth_account, run_mitmdump, write_accounts

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(60)]

TRACKER_FAILED = "cannot save rotation state"
TRACKER_SAVED = "rotation state saved again"
LOGIN_FAILED = "could not be saved"
LOGIN_SAVED = "is saved to"


def _can_make_read_only(folder: Path) -> bool:
    probe = folder / "probe"
    probe.mkdir()
    try:
        with _read_only(probe):
            try:
                (probe / "x").write_bytes(b"")
            except OSError:
                return True
            return False
    except (OSError, subprocess.CalledProcessError):
        return False
    finally:
        shutil.rmtree(probe, ignore_errors=True)


@contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    if os.geteuid() != 0:
        folder.chmod(0o500)
        try:
            yield
        finally:
            folder.chmod(0o700)
        return
    chattr = shutil.which("chattr")
    if chattr is None:
        raise OSError("no chattr")
    subprocess.run([chattr, "+i", str(folder)], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(folder)], check=True, capture_output=True)


def _ask(http: httpx.Client) -> None:
    r = http.post(
        "https://portal.qwen.ai/v1/responses",
        json={"model": "coder-model", "input": "hi"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "completed"


def _until(what: Callable[[], bool], http: httpx.Client, seconds: float) -> None:
    """Keep asking (each answer may trigger a save) until ``what`` holds."""
    deadline = time.monotonic() + seconds
    while not what():
        assert time.monotonic() < deadline, "timed out"
        _ask(http)
        time.sleep(0.2)


def _newest(fake: FakeQwenOAuth, prefix: str) -> str:
    """The token (``fake-at-``: access, ``fake-rt-``: refresh) issued last."""
    return [t for t in fake.issued if t.startswith(prefix)][-1]


def _count(proxy: Proxy, text: str) -> int:
    return proxy.output().count(text)


def test_a_read_only_state_folder_is_survived_and_written_again(
    tmp_path: Path, fake: FakeQwenOAuth, portal: FakePortal, paths: StatePaths
) -> None:
    if not _can_make_read_only(tmp_path):
        pytest.skip("cannot make a folder read-only here (no chattr as root?)")
    solo = oauth_account(fake, "solo")
    write_accounts(paths, [solo])
    folder = paths.accounts.parent
    options = [
        "--set", "termlog_verbosity=info",
        # Many requests in a few seconds: the hybrid bucket must not hold them.
        "--set", "qwen_rotation_strategy=round-robin",
    ]  # fmt: skip
    with run_mitmdump(tmp_path, fake, portal, options) as proxy, proxy.http() as http:
        _ask(http)  # the first answer saves the rotation state at once
        _until(paths.tracker_state.exists, http, 5)
        old_tracker = paths.tracker_state.read_bytes()
        old_accounts = paths.accounts.read_bytes()
        with _read_only(folder):
            # Two 401s, two refreshes: each rotates the refresh token, neither
            # can be saved; the proxy must go on with the newest tokens.
            for _ in range(2):
                portal.script(_newest(fake, "fake-at-"), Fault("401"))
                _ask(http)
            assert fake.counts["refresh"] == 2
            # The rotation state is due 5 s after its first save.
            _until(lambda: _count(proxy, TRACKER_FAILED) > 0, http, 10)
            for _ in range(5):
                _ask(http)
            assert _count(proxy, TRACKER_FAILED) == 1
            assert _count(proxy, LOGIN_FAILED) == 1
            assert paths.tracker_state.read_bytes() == old_tracker
            assert paths.accounts.read_bytes() == old_accounts
            assert not list(folder.glob(".*.tmp"))
        _until(lambda: _count(proxy, LOGIN_SAVED) > 0, http, 5)
        _until(lambda: paths.tracker_state.read_bytes() != old_tracker, http, 10)
        assert _count(proxy, TRACKER_SAVED) == 1
        assert "Traceback" not in proxy.output()
    stored = accounts_file(paths.accounts).read().get(solo.id)
    assert stored is not None
    assert stored.refresh_token is not None
    assert stored.refresh_token.get_secret_value() == _newest(fake, "fake-rt-")
    assert not stored.needs_relogin
