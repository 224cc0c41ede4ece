"""Classifying upstream error answers, and the Retry-After hints."""

from __future__ import annotations

import datetime as dt
import email.utils
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qwen_oauth_mitm.config import parse_timezone
from qwen_oauth_mitm.rotation.ratelimit import (
    MAX_HINT_SECONDS,
    Verdict,
    body_retry_after,
    classify_error,
    embedded_error_status,
    header_retry_after,
    next_quota_reset,
    quota_day,
)

SHANGHAI = parse_timezone("Asia/Shanghai")
# 2026-01-05 15:30:00 UTC = 23:30 in Shanghai.
NOW = dt.datetime(2026, 1, 5, 15, 30, tzinfo=dt.UTC).timestamp()


def http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(NOW + seconds_from_now, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "120"}, 120.0),
        ({"retry-after": " 1.5 "}, 1.5),
        ({"Retry-After": "0"}, 1.0),  # floored: never a hot retry loop
        ({"Retry-After": http_date(90)}, 90.0),
        ({"Retry-After": http_date(-30)}, 1.0),  # a date already past
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 -0000"}, 1.0),
        ({"Retry-After": "999999999"}, MAX_HINT_SECONDS),
        ({"retry-after-ms": "2500"}, 2.5),
        ({"retry-after-ms": "2500", "Retry-After": "60"}, 2.5),  # ms wins
        ({"retry-after-ms": "soon", "Retry-After": "60"}, 60.0),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "-5"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": ""}, None),
        ({}, None),
    ],
)
def test_header_retry_after(headers: dict[str, str], expected: float | None) -> None:
    got = header_retry_after(headers, NOW)
    assert got == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"error": {"retry_after": 30}}, 30.0),
        ({"error": {"retryAfter": "12"}}, 12.0),
        ({"retry_after_ms": 4000}, 4.0),
        ({"error": {"details": [{"@type": "RetryInfo", "retryDelay": "1.5s"}]}}, 1.5),
        ({"error": {"retryDelay": "2500ms"}}, 2.5),
        ({"error": {"message": "Rate limited. Please retry after 20 seconds."}}, 20),
        ({"message": "Too many requests, try again in 2 minutes"}, 120.0),
        ({"error": {"message": "retry in 1 hour"}}, 3600.0),
        ({"error": {"message": "retry after 3"}}, 3.0),
        # Sub-second hints are clamped up to the 1 s floor, never read as minutes.
        ({"error": {"message": "Please retry after 500 milliseconds"}}, 1.0),
        ({"error": {"message": "retry after 1 millisecond"}}, 1.0),
        ({"error": {"message": "retry after 2500 ms"}}, 2.5),
        ({"error": {"message": "retry in 3 mins"}}, 180.0),
        ({"error": {"retry_after": "later"}}, None),
        ({"error": {"retry_after": True}}, None),
        ({"error": {"message": "Requests throttling triggered."}}, None),
        (["not", "an", "object"], None),
        ("just text", None),
    ],
)
def test_body_retry_after(body: object, expected: float | None) -> None:
    got = body_retry_after(body)
    assert got == (pytest.approx(expected) if expected is not None else None)


def classify(
    status: int, body: object = b"", headers: dict[str, str] | None = None
) -> Verdict:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return classify_error(
        status,
        headers or {},
        raw,
        now=NOW,
        reset_tz=SHANGHAI,
        default_cooldown=60,
    )


QUOTA = {
    "error": {
        "code": "insufficient_quota",
        "type": "insufficient_quota",
        "message": "Free allocated quota exceeded.",
    }
}
MIDNIGHT_SHANGHAI = dt.datetime(2026, 1, 5, 16, 0, tzinfo=dt.UTC).timestamp()


@pytest.mark.parametrize("status", [429, 403])
def test_quota_cools_until_the_next_midnight_of_the_reset_zone(status: int) -> None:
    v = classify(status, QUOTA)
    assert v.kind == "quota"
    assert v.until == MIDNIGHT_SHANGHAI  # 30 minutes away, not seconds
    assert "insufficient_quota" in v.detail


def test_quota_recognised_by_message_alone() -> None:
    v = classify(429, {"error": {"message": "Free allocated quota exceeded."}})
    assert v.kind == "quota"


def test_quota_believes_a_later_hint_but_not_an_earlier_one() -> None:
    assert classify(429, QUOTA, {"Retry-After": "60"}).until == MIDNIGHT_SHANGHAI
    later = classify(429, QUOTA, {"Retry-After": "7200"})
    assert later.until == NOW + 7200
    assert later.retry_after == 7200


@pytest.mark.parametrize(
    "body",
    [
        {"error": {"code": "Throttling.RateQuota", "message": "Requests rate limit"}},
        {"code": "Throttling.RateQuota", "message": "Requests throttling triggered."},
        {"error": {"message": "Requests throttling triggered."}},
        # A throttle despite the word "quota": not the daily quota.
        {"code": "Throttling.AllocationQuota", "message": "Allocated quota exceeded"},
        {"error": {"message": "rate limit reached"}},
        b"",
        b"<html><body>Too Many Requests</body></html>",
    ],
)
def test_other_429s_are_rate_limits_with_the_default_cooldown(body: object) -> None:
    v = classify(429, body)
    assert v.kind == "rate_limit"
    assert v.until == NOW + 60
    assert v.retry_after is None


def test_a_429_hint_sets_the_cooldown() -> None:
    assert classify(429, b"", {"Retry-After": "7"}).until == NOW + 7
    hinted = {"error": {"code": "Throttling", "message": "retry after 9 seconds"}}
    assert classify(429, hinted).until == NOW + 9
    # A header beats the body.
    assert classify(429, hinted, {"Retry-After": "3"}).until == NOW + 3


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (
            401,
            {"error": {"code": "invalid_api_key", "message": "token expired"}},
            "auth",
        ),
        (401, QUOTA, "auth"),
        (403, {"error": {"code": "AccessDenied", "message": "forbidden"}}, "account"),
        (500, {"error": {"message": "internal error"}}, "upstream"),
        (
            504,
            b"<html><head><title>504 Gateway Time-out</title></head></html>",
            "upstream",
        ),
        (503, QUOTA, "upstream"),
        (400, {"error": {"code": "invalid_parameter", "message": "bad"}}, "client"),
        (400, QUOTA, "client"),
        (404, b"not found", "client"),
    ],
)
def test_kinds(status: int, body: object, kind: str) -> None:
    v = classify(status, body)
    assert v.kind == kind
    assert v.until is None
    assert v.detail.startswith(str(status))


def test_detail_is_short_and_built_from_code_and_message() -> None:
    v = classify(429, {"error": {"code": "Throttling", "message": "x" * 500}})
    assert v.detail.startswith("429 Throttling xxx")
    assert len(v.detail) <= 200


def test_a_huge_or_deep_body_is_not_a_crash() -> None:
    assert classify(429, b"[" * 100_000).kind == "rate_limit"
    assert classify(429, b"{" + b" " * (2 << 20) + b"}").kind == "rate_limit"


def test_success_is_not_an_error() -> None:
    with pytest.raises(ValueError, match="not an error"):
        classify(200)


def utc(*parts: int) -> float:
    year, month, day, hour, minute = parts
    return dt.datetime(year, month, day, hour, minute, tzinfo=dt.UTC).timestamp()


@pytest.mark.parametrize(
    ("zone", "now_utc", "reset_utc"),
    [
        ("Asia/Shanghai", (2026, 1, 5, 15, 30), (2026, 1, 5, 16, 0)),
        ("Asia/Shanghai", (2026, 1, 5, 16, 0), (2026, 1, 6, 16, 0)),  # at midnight
        ("UTC", (2026, 1, 5, 15, 30), (2026, 1, 6, 0, 0)),
        ("UTC+08:00", (2026, 1, 5, 15, 30), (2026, 1, 5, 16, 0)),
        ("UTC-05:30", (2026, 1, 5, 3, 0), (2026, 1, 5, 5, 30)),
        # New York springs forward on 2026-03-08: that midnight is still EST.
        ("America/New_York", (2026, 3, 7, 17, 0), (2026, 3, 8, 5, 0)),
        ("America/New_York", (2026, 3, 8, 17, 0), (2026, 3, 9, 4, 0)),
    ],
)
def test_next_quota_reset(
    zone: str, now_utc: tuple[int, int, int, int, int], reset_utc: tuple[int, ...]
) -> None:
    now = utc(*now_utc)
    want = utc(*reset_utc)
    assert next_quota_reset(now, parse_timezone(zone)) == want


def test_quota_day_is_the_date_in_the_reset_zone() -> None:
    assert quota_day(NOW, SHANGHAI) == "2026-01-05"
    assert quota_day(NOW + 1800, SHANGHAI) == "2026-01-06"
    assert quota_day(NOW + 1800, dt.UTC) == "2026-01-05"


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"error": {"code": "insufficient_quota", "message": "Free quota"}}, 429),
        ({"error": {"code": "Throttling", "message": "Requests throttling"}}, 429),
        ({"error": {"message": "Rate limit reached for requests"}}, 429),
        ({"code": "Arrearage", "message": "Too many requests"}, 429),
        ({"error": {"code": 401, "message": "expired"}}, 401),
        ({"error": {"status": "503", "message": "busy"}}, 503),
        ({"error": {"code": 200, "message": "odd"}}, 502),
        ({"error": {"code": True, "message": "odd"}}, 502),
        ({"error": {"code": "InternalError", "message": "Internal error"}}, 502),
        ({"code": "data_inspection_failed", "message": "Input inappropriate"}, 400),
        ({"error": {"code": "InvalidParameter", "message": "bad top_p"}}, 400),
        ({"error": {"type": "invalid_request_error", "message": "no"}}, 400),
        (
            {
                "error": {
                    "type": "invalid_request_error",
                    "message": "Rate limit reached",
                }
            },
            429,
        ),
        ({"error": "boom"}, 502),
        ([1, 2], 502),
    ],
)
def test_an_error_object_under_200_stands_for_a_status(
    payload: object, status: int
) -> None:
    assert embedded_error_status(payload) == status


@pytest.mark.parametrize(
    "value",
    [
        "²",  # str.isdigit() says yes; int() refuses it
        "٤٢٩",  # Arabic-Indic digits: int() reads 429
        "4" * 5000,  # past Python's int digit limit
        "",
    ],
    ids=["superscript", "arabic-indic", "5000-digits", "empty"],
)
@pytest.mark.parametrize("key", ["status", "status_code", "http_status", "code"])
def test_a_status_string_counts_only_as_three_ascii_digits(
    key: str, value: str
) -> None:
    """Anything else is no status (and never raises out of the 200 judging)."""
    assert embedded_error_status({"error": {key: value, "message": "x"}}) == 502


# What an upstream may put where a status or a hint is looked for.
_odd_numbers = (
    st.sampled_from(["²", "٤٢٩", "4" * 5000, "429", "1e999", "-1", "30s", ""])
    | st.text(st.characters(categories=["Nd", "No"]), max_size=5)
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**400)
    | st.floats()
)
_fields = st.sampled_from(
    [
        "status",
        "status_code",
        "http_status",
        "code",
        "type",
        "message",
        "retry_after",
        "retry_after_ms",
        "retryDelay",
    ]
)
_json = st.recursive(
    st.none() | st.booleans() | _odd_numbers | st.text(max_size=40),
    lambda kids: (
        st.lists(kids, max_size=3)
        | st.dictionaries(_fields | st.text(max_size=4), kids, max_size=4)
    ),
    max_leaves=12,
)
_error_objects = st.dictionaries(_fields, _odd_numbers | _json, max_size=4)
error_payloads = (
    _json | _error_objects | st.fixed_dictionaries({"error": _error_objects | _json})
)
"""Arbitrary JSON shaped like the error objects upstreams send."""


@given(
    payload=error_payloads,
    status=st.integers(min_value=400, max_value=599),
    headers=st.dictionaries(
        st.sampled_from(["retry-after", "Retry-After", "retry-after-ms"]),
        st.text(max_size=40)
        | st.sampled_from(["Mon, 01 Jan 99999999999999999999 00:00:00 GMT", "1e999"]),
    ),
)
def test_classifying_arbitrary_error_answers_never_raises(
    payload: object, status: int, headers: dict[str, str]
) -> None:
    """A raise here escaped the forwarder as "502 Proxy error", the pick unsettled."""
    body = json.dumps(payload).encode()
    assert 400 <= embedded_error_status(payload) <= 599
    verdict = classify_error(
        status, headers, body, now=NOW, reset_tz=SHANGHAI, default_cooldown=60
    )
    if verdict.retry_after is not None:
        assert 1 <= verdict.retry_after <= MAX_HINT_SECONDS
