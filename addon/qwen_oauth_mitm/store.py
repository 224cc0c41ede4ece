"""State files on disk: atomic, private, locked across processes.

Every write goes to a temporary file in the same folder (created 0600 by
``mkstemp``, so no other user can read it at any moment), is fsynced, and replaces
the target with ``os.replace``: a reader, or a process killed mid-write, sees the
old file or the new one, never half of one. A read-modify-write holds a lock file
(``<name>.lock``, an OS lock that dies with its process, so there are no stale
locks) and re-reads under it, so two processes editing at once lose nothing.

A corrupt file is handled by the caller's policy: the accounts file is never
overwritten (``CorruptStateError`` names it and leaves it byte-for-byte as it was);
the tracker-state file is moved aside and started afresh with a warning.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import filelock
from pydantic import BaseModel, ValidationError

from qwen_oauth_mitm.accounts import AccountsFile
from qwen_oauth_mitm.errors import CorruptStateError, StoreError

log = logging.getLogger(__name__)

CorruptPolicy = Literal["raise", "quarantine"]
DEFAULT_LOCK_TIMEOUT = 10.0
LOCK_FILE_MODE = 0o600
"""filelock creates lock files 0644 by default; ours are as private as the file."""


def ensure_private_dir(folder: Path) -> None:
    """Create ``folder`` (0700) if missing; an existing folder is left as it is."""
    if not folder.is_dir():
        folder.mkdir(parents=True, mode=0o700, exist_ok=True)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically; the file is 0600 from its first byte.

    On failure (disk full, read-only folder) the old file is untouched, the
    temporary file removed, and a :class:`StoreError` raised.

    Every caller holds the target's lock (:meth:`JsonStateFile.locked`, or the
    token manager's lock on the same file), so another temporary file of this
    target found now was left by a writer killed mid-write: it is removed. It
    holds a copy of the secrets, and one more would pile up with every such kill.
    """
    try:
        ensure_private_dir(path.parent)
        _remove_leftovers(path)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
        )
    except OSError as e:
        raise StoreError(f"cannot write {path}: {e.strerror or e}", path=path) from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StoreError(f"cannot write {path}: {e.strerror or e}", path=path) from e
    _fsync_dir(path.parent)


def _remove_leftovers(path: Path) -> None:
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):
            leftover.unlink()


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; directories cannot be opened on Windows.
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def tighten_permissions(path: Path) -> bool:
    """Make ``path`` 0600 if group or others can access it; True when changed."""
    if os.name != "posix":
        return False
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            os.chmod(path, 0o600)
            log.warning(
                "%s was readable by others (mode %o); set it to 0600", path, mode
            )
            return True
    except OSError as e:
        log.warning("cannot check the permissions of %s: %s", path, e.strerror)
    return False


class JsonStateFile[M: BaseModel]:
    """One JSON state file holding a pydantic model ``M``."""

    def __init__(
        self,
        path: Path,
        model: type[M],
        *,
        default: Callable[[], M],
        on_corrupt: CorruptPolicy,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    ) -> None:
        self.path = path
        self._model = model
        self._default = default
        self._on_corrupt = on_corrupt
        # The file lock keeps other processes out. It is re-entrant for the whole
        # process (thread_local=False, so an async caller may release it from another
        # thread), so threads of this process are kept apart by the RLock as well.
        self._lock = filelock.FileLock(
            str(path) + ".lock",
            timeout=lock_timeout,
            mode=LOCK_FILE_MODE,
            thread_local=False,
        )
        self._thread_lock = threading.RLock()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the cross-process lock (re-entrant within this object)."""
        try:
            ensure_private_dir(self.path.parent)
        except OSError as e:
            raise StoreError(
                f"cannot create {self.path.parent}: {e.strerror or e}", path=self.path
            ) from e
        try:
            with self._thread_lock, self._lock:
                yield
        except filelock.Timeout as e:
            raise StoreError(
                f"{self.path} is locked by another process (waited "
                f"{self._lock.timeout:g} s)",
                path=self.path,
            ) from e

    def read(self) -> M:
        """The current content; the default when the file does not exist yet."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return self._default()
        except OSError as e:
            raise StoreError(
                f"cannot read {self.path}: {e.strerror}", path=self.path
            ) from e
        tighten_permissions(self.path)
        try:
            return self._model.model_validate_json(raw)
        except ValidationError as e:
            why = _describe(e)
        # Outside the handler: the ValidationError shows the input (tokens and all),
        # so it must not become the context of what we raise.
        return self._corrupt(why)

    def write(self, value: M) -> None:
        with self.locked():
            atomic_write(self.path, _dump(value))

    def update(self, change: Callable[[M], M]) -> M:
        """Read, change and write under the lock; returns what was written."""
        with self.locked():
            new = change(self.read())
            atomic_write(self.path, _dump(new))
            return new

    def signature(self) -> tuple[int, ...] | None:
        """A fingerprint of the file, to notice that another process changed it.

        Every write replaces the file, so its inode changes even where mtime is
        coarse (1-2 s on HFS+, FAT, SMB) and a rotated token keeps the size.
        """
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)

    def _corrupt(self, why: str) -> M:
        if self._on_corrupt == "raise":
            raise CorruptStateError(
                f"{self.path} is not a valid state file ({why}). It was left as it "
                "is: fix it, or move it away and log in again.",
                path=self.path,
            ) from None
        aside = self.path.with_name(
            f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
        )
        try:
            os.replace(self.path, aside)
        except OSError as e:
            log.warning("%s is corrupt (%s) and cannot be moved: %s", self.path, why, e)
        else:
            log.warning(
                "%s was corrupt (%s); kept it as %s and started afresh",
                self.path,
                why,
                aside.name,
            )
        return self._default()


def accounts_file(
    path: Path, *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT
) -> JsonStateFile[AccountsFile]:
    """The accounts file: a corrupt one is an error and is never overwritten."""
    return JsonStateFile(
        path,
        AccountsFile,
        default=AccountsFile,
        on_corrupt="raise",
        lock_timeout=lock_timeout,
    )


def _dump(value: BaseModel) -> bytes:
    # AccountsFile reveals its secrets only through to_json; others dump plainly.
    if isinstance(value, AccountsFile):
        return value.to_json()
    return value.model_dump_json(indent=2).encode() + b"\n"


def _describe(error: ValidationError) -> str:
    """What is wrong and where, never the input (the file holds tokens)."""
    errors = error.errors(include_url=False, include_context=False, include_input=False)
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "top level"
    # A validator's own message may quote the value it refused: name the type only.
    what = first["type"] if first["type"] in _MAY_QUOTE_INPUT else first["msg"]
    return f"{what} at {where}"


_MAY_QUOTE_INPUT = frozenset({"value_error", "assertion_error"})
