"""The soak's invariants, checked on what the client got and the stand-in saw.

Pure functions over plain data, so each rule is easy to read:

- every client-visible failure has an allowed cause (:func:`classify`): the
  upstream cut a stream after its first byte (nothing can be retried then), or no
  account could serve (every attempt the proxy made was refused). Any other
  failure is a violation;
- tokens were refreshed exactly when needed (:func:`check_refreshes`): each
  refresh was due (the token was within the refresh window of its expiry) or
  followed a 401 for that very token, and the portal never saw an expired token.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from scripts.soaklib.client import Outcome
from scripts.soaklib.standin import Record, Upstream

SERVED = "served"
CUT = "upstream cut mid-stream (nothing is retried after the first byte)"
TWO_5XX = (
    "no account could serve: a 5xx, and another on the account it failed over to "
    "(a 5xx fails over once)"
)
REFUSED = "no account could serve: every account tried was rate-limited or refused"
ALLOWED = frozenset({SERVED, CUT, TWO_5XX, REFUSED})


def classify(outcome: Outcome, attempts: list[Upstream]) -> str:
    """Why the client got what it got; anything not in :data:`ALLOWED` is a bug."""
    got_200 = any(a.status == 200 for a in attempts)
    if outcome.result == "ok":
        return (
            SERVED
            if got_200
            else f"unexpected: served without an upstream 200 {_fmt(attempts)}"
        )
    last = attempts[-1] if attempts else None
    if (
        outcome.stream
        and outcome.result in ("failed_event", "cut")
        and last is not None
        and last.status == 200
        and last.fault == "drop"
    ):
        return CUT
    if outcome.result == "http_error" and attempts and not got_200:
        if sum(a.status >= 500 for a in attempts) >= 2 and (outcome.status or 0) >= 500:
            return TWO_5XX
        if outcome.status in (401, 429) and all(
            a.status in (401, 429) for a in attempts
        ):
            return REFUSED
    return (
        f"unexpected: {outcome.kind} stream={outcome.stream} {outcome.result} "
        f"{outcome.status} {outcome.detail!r} after {_fmt(attempts)}"
    )


def _fmt(attempts: list[Upstream]) -> str:
    shown = [
        f"{a.account}:{a.status}{'/' + a.fault if a.fault else ''}" for a in attempts
    ]
    return "[" + ", ".join(shown) + "]"


@dataclass
class RefreshCheck:
    per_account: Counter[str]
    due: int = 0
    """Refreshes of a token within the refresh window of its expiry."""
    after_401: int = 0
    """Refreshes of a token the portal had refused (a 401)."""
    violations: list[str] | None = None


def check_refreshes(
    record: Record, *, lifetime: float, window: float, slack: float = 0.5
) -> RefreshCheck:
    """Every refresh justified; no expired token ever reached the portal."""
    violations: list[str] = []
    refused: dict[str, float] = {}
    for _, at, token in record.refused:
        refused.setdefault(token, at)
    current: dict[str, str] = {}
    for token, issued in sorted(record.issued.items(), key=lambda kv: kv[1].at):
        if not issued.refresh:
            current.setdefault(issued.account, token)
    result = RefreshCheck(Counter())
    for account, at, new in sorted(record.refreshes, key=lambda r: r[1]):
        result.per_account[account] += 1
        old = current.get(account)
        old_at = record.issued[old].at if old in record.issued else None
        if old_at is not None and at >= old_at + lifetime - window - slack:
            result.due += 1
        elif old is not None and old in refused and refused[old] <= at + slack:
            result.after_401 += 1
        else:
            age = "?" if old_at is None else f"{at - old_at:.1f} s"
            violations.append(
                f"refresh of {account} at {age} into its token's life, before it "
                "was due and without a 401 for it (a needless refresh)"
            )
        current[account] = new
    for tag_attempts in [*record.by_tag.values(), record.untagged]:
        for a in tag_attempts:
            if a.status == 401 and a.fault is None:
                violations.append(
                    f"the portal refused a token of {a.account} that no fault refused "
                    "(an expired token was used: refreshed too late)"
                )
    result.violations = violations
    return result
