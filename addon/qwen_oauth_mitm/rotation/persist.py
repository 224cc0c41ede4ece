"""Load and save the tracker state (``qwen-auth-tracker-state.json``).

The only I/O of the rotation package, kept thin. The file goes through
:class:`~qwen_oauth_mitm.store.JsonStateFile` (atomic, 0600, locked); a corrupt
file is moved aside and rotation starts afresh, since this state is only a cache of
what rotation learned. Saving is throttled: :meth:`TrackerStore.maybe_save` writes
at most every ``interval`` seconds and only when the engine changed;
:meth:`TrackerStore.save` writes now (on shutdown). A failed write (disk full,
read-only folder) is logged once and retried at the next save: the proxy keeps
serving from memory. Writes block for a few milliseconds (fsync); the addon may
run them in a thread.

Several proxy processes sharing one file each write their own view; the last
writer wins. That loses at most a few seconds of counters, never an account.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from qwen_oauth_mitm.errors import StoreError
from qwen_oauth_mitm.rotation.state import TrackerState
from qwen_oauth_mitm.store import JsonStateFile

log = logging.getLogger(__name__)

DEFAULT_SAVE_INTERVAL = 5.0
LOCK_TIMEOUT = 1.0
"""Short: the tracker is a cache, so a busy lock means "save later", not "wait"."""


class Snapshotting(Protocol):
    """What the store needs from the engine (``Rotation`` fits)."""

    @property
    def revision(self) -> int: ...

    def snapshot(self) -> TrackerState: ...


def tracker_file(path: Path) -> JsonStateFile[TrackerState]:
    """The tracker-state file: a corrupt one is quarantined and started afresh."""
    return JsonStateFile(
        path,
        TrackerState,
        default=TrackerState,
        on_corrupt="quarantine",
        lock_timeout=LOCK_TIMEOUT,
    )


class TrackerStore:
    """Throttled, failure-tolerant saving of one engine's state."""

    def __init__(
        self,
        file: JsonStateFile[TrackerState],
        *,
        interval: float = DEFAULT_SAVE_INTERVAL,
    ) -> None:
        self.file = file
        self.interval = interval
        # Revision 0 is an engine exactly as built from load(): nothing to write.
        self._saved_revision = 0
        self._last_attempt: float | None = None
        self._failing = False

    def load(self) -> TrackerState:
        """The saved state; a fresh one when missing, corrupt or unreadable."""
        try:
            return self.file.read()
        except (StoreError, OSError) as e:
            log.warning("rotation state not loaded, starting afresh: %s", e)
            return TrackerState()

    def maybe_save(self, engine: Snapshotting, now: float) -> bool:
        """Save if the engine changed and ``interval`` passed since the last try.

        ``now`` is any clock that only moves forward (``time.monotonic``).
        Returns True when a write happened and succeeded.
        """
        return self.due(engine, now) and self.save(engine)

    def due(self, engine: Snapshotting, now: float) -> bool:
        """True (and counted as an attempt) when :meth:`maybe_save` would write.

        For a caller that takes the snapshot itself and writes it elsewhere (the
        addon writes from a thread, off mitmproxy's event loop).
        """
        if engine.revision == self._saved_revision:
            return False
        if self._last_attempt is not None and now - self._last_attempt < self.interval:
            return False
        self._last_attempt = now
        return True

    def save(self, engine: Snapshotting) -> bool:
        """Write the engine's state now; False (logged once) when it cannot."""
        return self.write(engine.snapshot(), engine.revision)

    def write(self, snapshot: TrackerState, revision: int) -> bool:
        """Write a snapshot taken at ``revision``; thread-safe (the file locks)."""
        try:
            self.file.write(snapshot)
        except (StoreError, OSError) as e:  # OSError: the lock file itself failed
            if not self._failing:
                log.warning(
                    "cannot save rotation state (%s); keeping it in memory and "
                    "trying again later",
                    e,
                )
            self._failing = True
            return False
        if self._failing:
            log.info("rotation state saved again to %s", self.file.path)
        self._failing = False
        self._saved_revision = revision
        return True
