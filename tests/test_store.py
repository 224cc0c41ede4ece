from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, SecretStr

from qwen_oauth_mitm.accounts import Account, AccountsFile, new_account_id
from qwen_oauth_mitm.errors import CorruptStateError, StoreError
from qwen_oauth_mitm.store import JsonStateFile, accounts_file, atomic_write

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def account(label: str) -> Account:
    return Account(
        id=new_account_id(),
        label=label,
        kind="oauth",
        access_token=SecretStr("at-" + label),
        refresh_token=SecretStr("rt-" + label),
        added_at=time.time(),
        updated_at=time.time(),
    )


class Counter(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    version: int = 1
    n: int = 0


@posix_only
def test_files_are_0600_and_a_created_folder_0700(tmp_path: Path) -> None:
    path = tmp_path / "new" / "qwen-auth-accounts.json"
    store = accounts_file(path)
    store.update(lambda f: f.put(account("a")))
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    # No temporary files are left behind.
    assert sorted(
        p.name for p in path.parent.iterdir() if not p.name.endswith(".lock")
    ) == [path.name]


@posix_only
def test_the_lock_file_is_0600(tmp_path: Path) -> None:
    # filelock's default is 0644 (less the umask), whatever the file it guards.
    path = tmp_path / "new" / "qwen-auth-accounts.json"
    accounts_file(path).update(lambda f: f.put(account("a")))
    assert mode(path.with_name(path.name + ".lock")) == 0o600


@posix_only
def test_temp_file_is_private_from_its_first_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        seen.append(mode(Path(src)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    atomic_write(tmp_path / "f.json", b"{}")
    assert seen == [0o600]


@posix_only
def test_a_looser_file_is_tightened_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "qwen-auth-accounts.json"
    path.write_bytes(AccountsFile(accounts=(account("a"),)).to_json())
    path.chmod(0o644)
    assert len(accounts_file(path).read().accounts) == 1
    assert mode(path) == 0o600
    assert "readable by others" in caplog.text


def test_missing_file_reads_as_empty(tmp_path: Path) -> None:
    assert accounts_file(tmp_path / "nope.json").read() == AccountsFile()


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"",
        b'{"version": 2, "accounts": []}',
        b'{"accounts": [{"id": 1}]}',
    ],
)
def test_corrupt_accounts_file_is_an_error_and_left_untouched(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "qwen-auth-accounts.json"
    path.write_bytes(content)
    store = accounts_file(path)
    with pytest.raises(CorruptStateError) as e:
        store.read()
    assert str(path) in str(e.value)
    with pytest.raises(CorruptStateError):
        store.update(lambda f: f.put(account("x")))
    assert path.read_bytes() == content
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [
        path.name
    ]


def test_corrupt_tracker_file_is_moved_aside_and_started_fresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "qwen-auth-tracker-state.json"
    path.write_bytes(b'{"n": "many"}')
    store = JsonStateFile(path, Counter, default=Counter, on_corrupt="quarantine")
    assert store.read() == Counter()
    kept = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(kept) == 1
    assert kept[0].read_bytes() == b'{"n": "many"}'
    assert not path.exists()
    assert "was corrupt" in caplog.text


def test_failed_write_keeps_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f.json"
    atomic_write(path, b'{"old": true}')

    def full(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(StoreError, match="No space left on device"):
        atomic_write(path, b'{"new": true}')
    assert path.read_bytes() == b'{"old": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_a_killed_writers_temporary_file_goes_at_the_next_write(
    tmp_path: Path,
) -> None:
    path = tmp_path / "qwen-auth-accounts.json"
    accounts_file(path).write(AccountsFile())
    # What a writer SIGKILLed between mkstemp and os.replace leaves behind.
    leftover = tmp_path / f".{path.name}.k1ll3d.tmp"
    leftover.write_bytes(b'{"accounts": "a copy of the secrets"}')
    other = tmp_path / ".qwen-auth-tracker-state.json.k1ll3d.tmp"
    other.write_bytes(b"")
    accounts_file(path).update(lambda f: f.put(account("a")))
    assert not leftover.exists()
    assert other.exists()  # another file's: that file's own writes remove it


def test_update_returns_and_persists(tmp_path: Path) -> None:
    store = JsonStateFile(
        tmp_path / "c.json", Counter, default=Counter, on_corrupt="raise"
    )
    assert store.update(lambda c: c.model_copy(update={"n": c.n + 1})).n == 1
    assert store.update(lambda c: c.model_copy(update={"n": c.n + 1})).n == 2
    assert json.loads((tmp_path / "c.json").read_text())["n"] == 2


def test_signature_changes_when_the_file_changes(tmp_path: Path) -> None:
    store = JsonStateFile(
        tmp_path / "c.json", Counter, default=Counter, on_corrupt="raise"
    )
    assert store.signature() is None
    store.write(Counter(n=1))
    first = store.signature()
    store.write(Counter(n=22))
    assert store.signature() not in (None, first)


ADDER = textwrap.dedent(
    """
    import sys, time
    from pydantic import SecretStr
    from pathlib import Path
    from qwen_oauth_mitm.accounts import Account, new_account_id
    from qwen_oauth_mitm.store import accounts_file

    store = accounts_file(Path(sys.argv[1]))
    tag = sys.argv[2]
    for i in range(50):
        acct = Account(id=new_account_id(), label=f"{tag}-{i}", kind="key",
                       access_token=SecretStr(f"k-{tag}-{i}"), added_at=time.time(),
                       updated_at=time.time())
        store.update(lambda f: f.put(acct))
    """
)


@pytest.mark.slow
def test_two_processes_adding_50_accounts_each_end_with_100(tmp_path: Path) -> None:
    path = tmp_path / "qwen-auth-accounts.json"
    procs = [
        subprocess.Popen([sys.executable, "-c", ADDER, str(path), tag])
        for tag in ("p1", "p2")
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0
    labels = {a.label for a in accounts_file(path).read().accounts}
    assert len(labels) == 100
    assert {f"p1-{i}" for i in range(50)} | {f"p2-{i}" for i in range(50)} == labels


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from qwen_oauth_mitm.store import atomic_write

    path = Path(sys.argv[1])
    i = 0
    print("ready", flush=True)
    while True:
        i += 1
        # Big enough that a torn write would be likely to show.
        atomic_write(path, ('{"n": %d, "pad": "%s"}' % (i, "x" * 200_000)).encode())
    """
)


@posix_only
@pytest.mark.slow
def test_sigkill_during_tight_write_loop_never_leaves_a_torn_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.json"
    atomic_write(path, b'{"n": 0, "pad": ""}')
    seen = set()
    for round_ in range(20):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE
        )
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(0.02 + 0.01 * (round_ % 5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        data = json.loads(path.read_bytes())  # must always parse
        seen.add(data["n"])
        assert mode(path) == 0o600
    # The writer really made progress between kills (the test exercised writes).
    assert max(seen) > 0


def test_threads_of_one_process_do_not_lose_updates(tmp_path: Path) -> None:
    store = JsonStateFile(
        tmp_path / "c.json", Counter, default=Counter, on_corrupt="raise"
    )

    def bump(c: Counter) -> Counter:
        n = c.n
        time.sleep(0.001)  # widen the read-modify-write window
        return c.model_copy(update={"n": n + 1})

    def work() -> None:
        for _ in range(25):
            store.update(bump)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.read().n == 100


def test_a_folder_that_cannot_be_created_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = accounts_file(blocker / "sub" / "qwen-auth-accounts.json")
    with pytest.raises(StoreError, match="cannot create"):
        store.update(lambda f: f)


@posix_only
def test_signature_sees_a_same_size_rewrite_within_one_mtime_tick(
    tmp_path: Path,
) -> None:
    store = JsonStateFile(
        tmp_path / "c.json", Counter, default=Counter, on_corrupt="raise"
    )
    store.write(Counter(n=1))
    st = (tmp_path / "c.json").stat()
    first = store.signature()
    store.write(Counter(n=2))  # same size
    # A coarse file system would show the same mtime: pin it to the old one.
    os.utime(tmp_path / "c.json", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert store.signature() != first
