"""The quota day of a moment, for the picker: :func:`~.ratelimit.quota_day` without
building a time-zone-aware datetime on every request.

Pure; no I/O, no clock: the answer for a ``now`` is always that of
:func:`~.ratelimit.quota_day`, whatever moments were asked before (the next day, a
clock stepping back, a DST change). What is remembered is only a shortcut: the
bounds of the last day computed, so that a ``now`` inside them costs two
comparisons instead of a time-zone conversion and a date formatting.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable

from qwen_oauth_mitm.rotation.ratelimit import quota_day

EDGE_MARGIN = 1e-3
"""Seconds at each end of a day left to the full computation. ``fromtimestamp``
rounds to the microsecond (a ``now`` a hair before midnight is already the next
day) and epoch-scale floats carry ~1e-7 s of error; a millisecond is far above
both and costs one full computation in the last millisecond of a day."""

_ONE_DAY = dt.timedelta(days=1)


class QuotaDays:
    """:func:`~.ratelimit.quota_day` for one time zone, remembering the last day's
    bounds ``[start, end)`` in seconds since the epoch."""

    __slots__ = ("_day", "_end", "_start", "tz")

    def __init__(self, tz: dt.tzinfo) -> None:
        self.tz = tz
        # An empty range: the first call computes.
        self._start = math.inf
        self._end = -math.inf
        self._day = ""

    def day(self, now: float) -> str:
        """The ISO date of ``now`` in the time zone (``quota_day(now, tz)``)."""
        if self._start <= now < self._end:
            return self._day
        return self._compute(now)

    def _compute(self, now: float) -> str:
        day = quota_day(now, self.tz)
        bounds = day_bounds(dt.date.fromisoformat(day), self.tz)
        if bounds is not None:
            # Kept even when ``now`` lies outside them (the last millisecond, or a
            # moment day_bounds leaves out): they still hold only moments of ``day``.
            self._start = bounds[0] + EDGE_MARGIN
            self._end = bounds[1] - EDGE_MARGIN
            self._day = day
        return day


def day_bounds(date: dt.date, tz: dt.tzinfo) -> tuple[float, float] | None:
    """Moments ``[start, end)`` all of which fall on ``date`` in ``tz``, from its
    midnight to the next; None at the ends of the calendar.

    A midnight inside a DST change has two readings (PEP 495 ``fold``): a
    midnight skipped by a jump forward maps to a moment on either side of the
    jump, a midnight repeated by a fall back to its first and second passing. The
    start takes the later reading and the end the earlier, so the range may miss
    a little of the day but never holds a moment of another (the hour after a
    fall back across midnight, say, which is the day before again). That holds
    for a day with at most one offset change, as in every zone of the tz database
    (their changes are months apart).
    """
    try:
        return (
            _midnight(date, tz, max),
            _midnight(date + _ONE_DAY, tz, min),
        )
    except (OverflowError, ValueError, OSError):
        return None  # 0001-01-01 or 9999-12-31: not worth a shortcut


def _midnight(
    date: dt.date, tz: dt.tzinfo, choose: Callable[[float, float], float]
) -> float:
    wall = dt.datetime.combine(date, dt.time(), tzinfo=tz)
    return choose(wall.timestamp(), wall.replace(fold=1).timestamp())
