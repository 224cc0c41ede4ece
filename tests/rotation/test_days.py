"""The remembered quota day: always :func:`quota_day`'s answer, computed less often."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from functools import partial

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from qwen_oauth_mitm.config import parse_timezone
from qwen_oauth_mitm.rotation.days import QuotaDays, day_bounds
from qwen_oauth_mitm.rotation.ratelimit import quota_day

# DST zones, zones whose changes happen at midnight (Santiago falls back from
# 00:00 to 23:00, so a day has two 23 o'clocks; Beirut and Cairo change at
# midnight too), Apia, which skipped 2011-12-30, and fixed offsets.
ZONES = [
    "Europe/Berlin",
    "America/New_York",
    "Asia/Shanghai",
    "America/Santiago",
    "Asia/Beirut",
    "Africa/Cairo",
    "Pacific/Apia",
    "UTC",
    "UTC+05:45",
    "UTC-03:30",
]
FIRST = dt.date(1900, 1, 1)
LAST = dt.date(2100, 12, 31)


def utc(year: int, month: int, day: int, hour: int = 0) -> float:
    return dt.datetime(year, month, day, hour, tzinfo=dt.UTC).timestamp()


def outcome(f: Callable[[float], str], now: float) -> tuple[str, str]:
    """The day, or the kind of error, so that failures compare too."""
    try:
        return "day", f(now)
    except (OverflowError, ValueError, OSError) as e:
        return "error", type(e).__name__


def reference(tz: dt.tzinfo, now: float) -> str:
    return quota_day(now, tz)


@st.composite
def moments(draw: st.DrawFn, tz: dt.tzinfo) -> float:
    """Any moment, or one within a few milliseconds of a local midnight (either
    reading of it when a DST change makes it skipped or repeated)."""
    if draw(st.booleans()):
        return draw(
            st.floats(utc(1900, 1, 1), utc(2100, 1, 1))
            | st.floats(allow_nan=True, allow_infinity=True)
        )
    day = draw(st.dates(FIRST, LAST))
    fold = draw(st.sampled_from([0, 1]))
    wall = dt.datetime.combine(day, dt.time(), tzinfo=tz).replace(fold=fold)
    nudge = draw(
        st.sampled_from([0.0, 1e-7, -1e-7, 5e-7, -5e-7, 1e-6, -1e-6, 1e-3, -1e-3])
        | st.floats(-0.01, 0.01)
        | st.floats(-90_000, 90_000)
    )
    return wall.timestamp() + nudge


@given(data=st.data(), zone=st.sampled_from(ZONES))
def test_equals_quota_day_for_any_sequence_of_moments(
    data: st.DataObject, zone: str
) -> None:
    tz = parse_timezone(zone)
    days = QuotaDays(tz)
    # In the order drawn: forwards, backwards, across days and DST changes.
    for now in data.draw(st.lists(moments(tz), max_size=30)):
        assert outcome(days.day, now) == outcome(partial(reference, tz), now)


EPOCH = dt.datetime(1970, 1, 1)


class OneChange(dt.tzinfo):
    """A zone whose offset changes once, at ``at``, wherever that falls: the
    zones above change at midnight or at night, this one anywhere, so that a
    change straddling midnight (23:30 -> 00:30, 00:30 -> 23:30) is tried too.
    Readings of skipped and repeated times follow PEP 495."""

    def __init__(self, at: float, before: dt.timedelta, after: dt.timedelta) -> None:
        self.at, self.before, self.after = at, before, after

    def __repr__(self) -> str:
        return f"OneChange({self.at!r}, {self.before}, {self.after})"

    def utcoffset(self, d: dt.datetime | None) -> dt.timedelta:
        assert d is not None
        wall = (d.replace(tzinfo=None) - EPOCH).total_seconds()
        first = self.at + self.before.total_seconds()  # the wall clock at the change
        second = self.at + self.after.total_seconds()  # ... and right after it
        if wall < min(first, second):
            return self.before
        if wall >= max(first, second):
            return self.after
        # Skipped (a jump forward) or repeated (a fall back): fold picks the reading.
        return self.after if d.fold else self.before

    def dst(self, d: dt.datetime | None) -> dt.timedelta:
        return dt.timedelta(0)

    def tzname(self, d: dt.datetime | None) -> str:
        return type(self).__name__

    def fromutc(self, d: dt.datetime) -> dt.datetime:
        moment = (d.replace(tzinfo=None) - EPOCH).total_seconds()
        offset = self.before if moment < self.at else self.after
        wall = d + offset
        # The second passing of a repeated wall time has fold=1.
        repeated = self.after < self.before and (
            moment >= self.at
            and (wall.replace(tzinfo=None) - EPOCH).total_seconds()
            < self.at + self.before.total_seconds()
        )
        return wall.replace(fold=int(repeated))


offsets = st.integers(-14 * 60, 14 * 60).map(lambda m: dt.timedelta(minutes=m))


@given(
    at=st.integers(int(utc(2000, 1, 1)), int(utc(2030, 1, 1))),
    before=offsets,
    after=offsets,
    nudges=st.lists(
        st.integers(-3, 3).map(lambda d: d * 86_400.0)
        | st.floats(-200_000, 200_000)
        | st.sampled_from([0.0, -1e-3, 1e-3, -3e-7, 3e-7]),
        max_size=30,
    ),
    midnights=st.lists(st.tuples(st.integers(-3, 3), st.integers(0, 1)), max_size=6),
)
def test_equals_quota_day_around_any_single_change(
    at: int,
    before: dt.timedelta,
    after: dt.timedelta,
    nudges: list[float],
    midnights: list[tuple[int, int]],
) -> None:
    tz = OneChange(float(at), before, after)
    near = [at + n for n in nudges]
    change_day = dt.datetime.fromtimestamp(at, tz).date()
    for shift, fold in midnights:
        wall = dt.datetime.combine(change_day + dt.timedelta(days=shift), dt.time())
        moment = wall.replace(tzinfo=tz, fold=fold).timestamp()
        near += [moment - 1e-3, moment - 3e-7, moment, moment + 3e-7, moment + 1e-3]
    days = QuotaDays(tz)
    for now in near:
        assert days.day(now) == quota_day(now, tz)


@pytest.mark.parametrize(
    ("zone", "around"),
    [
        ("America/Santiago", utc(2024, 4, 7, 3)),  # 00:00 -03 falls back to 23:00
        ("America/Santiago", utc(2024, 9, 8, 4)),  # 00:00 -04 springs to 01:00
        ("Europe/Berlin", utc(2026, 3, 29, 1)),
        ("Europe/Berlin", utc(2026, 10, 25, 1)),
        ("America/New_York", utc(2026, 11, 1, 6)),
        ("Pacific/Apia", utc(2011, 12, 30, 10)),  # 2011-12-30 never happened there
    ],
)
def test_walks_across_a_dst_change_both_ways(zone: str, around: float) -> None:
    tz = parse_timezone(zone)
    days = QuotaDays(tz)
    steps = [around + s * 60.0 for s in range(-36 * 60, 36 * 60)]
    for now in [*steps, *reversed(steps)]:
        assert days.day(now) == quota_day(now, tz)


class CountingZone(dt.tzinfo):
    """UTC+08:00 that counts its UTC-to-local conversions."""

    def __init__(self) -> None:
        self.conversions = 0

    def utcoffset(self, d: dt.datetime | None) -> dt.timedelta:
        return dt.timedelta(hours=8)

    def dst(self, d: dt.datetime | None) -> dt.timedelta:
        return dt.timedelta(0)

    def tzname(self, d: dt.datetime | None) -> str:
        return type(self).__name__

    def fromutc(self, d: dt.datetime) -> dt.datetime:
        self.conversions += 1
        return d + dt.timedelta(hours=8)


def test_converts_once_a_day_not_once_a_call() -> None:
    tz = CountingZone()
    days = QuotaDays(tz)
    midnight = utc(2026, 1, 4, 16)  # 2026-01-05 00:00 at UTC+08:00
    for i in range(1000):
        assert days.day(midnight + 1 + i * 80) == "2026-01-05"
    assert tz.conversions == 1
    next_midnight = midnight + 86_400
    # A hair before midnight is already the next day: fromtimestamp rounds to the
    # microsecond. The last millisecond of a day is left to the full computation.
    assert midnight + 1 < next_midnight - 3e-7 < next_midnight
    assert days.day(next_midnight - 3e-7) == "2026-01-06"
    assert tz.conversions == 2
    assert days.day(next_midnight + 1) == "2026-01-06"
    assert tz.conversions == 2
    assert days.day(midnight + 1) == "2026-01-05"  # back: computed again
    assert tz.conversions == 3


def test_day_bounds_read_a_skipped_or_repeated_midnight_inside_the_day() -> None:
    santiago = parse_timezone("America/Santiago")
    # 2024-04-07 00:00 -03 fell back to 2024-04-06 23:00 -04: the 6th had 25
    # hours and the 7th began once, at 00:00 -04.
    assert day_bounds(dt.date(2024, 4, 6), santiago) == (
        utc(2024, 4, 6, 3),
        utc(2024, 4, 7, 4),
    )
    assert day_bounds(dt.date(2024, 4, 7), santiago) == (
        utc(2024, 4, 7, 4),
        utc(2024, 4, 8, 4),
    )
    # 2024-09-08 00:00 -04 sprang to 01:00 -03: that midnight never showed. The
    # 8th starts at the jump; the 7th's range stops an hour short of it (the
    # earlier reading), which costs only a full computation in that hour.
    assert day_bounds(dt.date(2024, 9, 7), santiago) == (
        utc(2024, 9, 7, 4),
        utc(2024, 9, 8, 3),
    )
    assert day_bounds(dt.date(2024, 9, 8), santiago) == (
        utc(2024, 9, 8, 4),
        utc(2024, 9, 9, 3),
    )


@example(now=utc(9999, 12, 31, 12))
@example(now=utc(1, 1, 1, 12))
@given(now=st.floats(utc(1, 1, 1, 12), utc(9999, 12, 31, 12)))
def test_the_ends_of_the_calendar_are_answered_without_a_shortcut(now: float) -> None:
    for zone in ("UTC", "UTC+14:00", "UTC-12:00"):
        tz = parse_timezone(zone)
        assert outcome(QuotaDays(tz).day, now) == outcome(partial(reference, tz), now)
    assert day_bounds(dt.date.max, dt.UTC) is None
