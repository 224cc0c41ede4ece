"""The ``with`` lifetime the test servers here share: serve on a daemon thread
from entry, stop and join it (bounded) on exit."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Self


class Background:
    """Subclasses set ``_thread`` (its target serves) and say how to ``_stop``."""

    _thread: threading.Thread

    def _stop(self) -> None:
        """Make the serving thread return (close the listening socket)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()
        self._thread.join(timeout=5)
