"""What a pick answers when nothing can serve, and how long the caller may wait."""

from __future__ import annotations

import pytest

from qwen_oauth_mitm.rotation.picks import AllUnavailable, wait_before_retry

T0 = 1_767_571_200.0


@pytest.mark.parametrize(
    ("retry_at", "waited", "max_wait", "expected"),
    [
        (T0 + 30, 0, 300, 30.0),
        (T0 + 30, 280, 300, None),  # would pass the limit
        (T0 + 30, 270, 300, 30.0),  # exactly at the limit
        (T0 + 3000, 0, 0, 3000.0),  # 0 = no limit
        (None, 0, 0, None),
        (T0 - 5, 0, 300, 0.0),
    ],
)
def test_wait_before_retry(
    retry_at: float | None, waited: float, max_wait: float, expected: float | None
) -> None:
    result = AllUnavailable(retry_at, ())
    assert wait_before_retry(result, T0, waited=waited, max_wait=max_wait) == expected


@pytest.mark.parametrize(
    ("retry_at", "seconds"),
    [(T0 + 0.2, 1), (T0 + 1, 1), (T0 + 29.01, 30), (T0 - 3, 1), (None, None)],
)
def test_retry_after_seconds_is_whole_and_at_least_one(
    retry_at: float | None, seconds: int | None
) -> None:
    assert AllUnavailable(retry_at, ()).retry_after_seconds(T0) == seconds
