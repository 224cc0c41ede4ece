"""Background tasks that cannot be garbage-collected mid-flight.

``asyncio.create_task`` keeps only a weak reference to its task: a task nobody
else holds may vanish before it finishes. :func:`spawn` keeps a strong reference
until the task is done (the reason ruff bans ``create_task`` elsewhere).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

_running: set[asyncio.Task[Any]] = set()


def spawn[T](
    coro: Coroutine[Any, Any, T], *, name: str | None = None
) -> asyncio.Task[T]:
    """Start ``coro`` as a task and keep it referenced until it is done."""
    task = asyncio.create_task(coro, name=name)
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task
