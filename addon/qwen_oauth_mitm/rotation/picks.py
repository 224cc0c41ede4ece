"""What :meth:`~.engine.Rotation.pick` answers, and how long a caller may wait.

Pure; no I/O, no clock. A :class:`Pick` is one request's lease on an account;
:class:`AllUnavailable` says when an account will be usable and why none is now;
:func:`wait_before_retry` turns that into "sleep this long" or "fail now" under
``max_rate_limit_wait_seconds``.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Literal

from qwen_oauth_mitm.accounts import Account
from qwen_oauth_mitm.rotation.status import AccountStatus, unavailable_message

PickReason = Literal["affinity", "score", "healthiest", "round-robin", "sequential"]
"""Why the account was chosen: the conversation's last account, the best hybrid
score, the healthiest when health alone ruled out all, or the strategy's order."""


@dataclass(frozen=True, slots=True)
class Pick:
    """The account chosen for one request; settle it exactly once."""

    account: Account
    reason: PickReason
    at: float
    score: float | None = None
    """The hybrid score, for logs (None for the other strategies)."""
    token_taken: float = 0.0
    previous_last_used: float | None = None
    day: str = ""


@dataclass(frozen=True, slots=True)
class AllUnavailable:
    """No account can serve now."""

    retry_at: float | None
    """Earliest moment an account becomes usable; None when waiting cannot help
    (every account disabled, needing re-login, or excluded)."""
    statuses: tuple[AccountStatus, ...]
    tried: frozenset[str] = frozenset()

    def retry_after_seconds(self, now: float) -> int | None:
        """Whole seconds for a ``Retry-After`` header (at least 1)."""
        if self.retry_at is None:
            return None
        return max(1, math.ceil(self.retry_at - now))

    def message(self, now: float, tz: dt.tzinfo = dt.UTC) -> str:
        """Each account's state and when to retry, for the client's error."""
        return unavailable_message(
            self.statuses, self.retry_at, now, tz, tried=self.tried
        )


def wait_before_retry(
    result: AllUnavailable, now: float, *, waited: float, max_wait: float
) -> float | None:
    """Seconds to wait before picking again, or None to fail the request now.

    ``waited`` is how long this request has already waited; ``max_wait`` is
    ``max_rate_limit_wait_seconds`` (0 = no limit).
    """
    if result.retry_at is None:
        return None
    delay = max(0.0, result.retry_at - now)
    if max_wait > 0 and waited + delay > max_wait:
        return None
    return delay
