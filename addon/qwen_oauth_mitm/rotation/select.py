"""Choosing the account: the hybrid score loop, and round-robin/sequential order.

Pure; no I/O, no clock. Both choosers run in one pass over the accounts, O(n),
and allocate nothing for accounts they rule out: the picker runs on every request,
and one pick among 1,000 accounts must stay well under a millisecond.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

from qwen_oauth_mitm.accounts import Account
from qwen_oauth_mitm.config import Config
from qwen_oauth_mitm.rotation import health as h
from qwen_oauth_mitm.rotation.picks import PickReason
from qwen_oauth_mitm.rotation.state import EMPTY_TRACK, AccountTrack

Choice = tuple[int, PickReason, float | None]
"""Index into the accounts, why, and the hybrid score (None for the others)."""


def usable(
    account: Account, track: AccountTrack, now: float, excluded: Collection[str]
) -> bool:
    """The rules of every strategy: enabled, logged in, not cooling, not excluded."""
    if account.disabled or account.needs_relogin or account.id in excluded:
        return False
    return track.cooldown is None or track.cooldown.until <= now


def choose_hybrid(
    accounts: Sequence[Account],
    tracks: Mapping[str, AccountTrack],
    now: float,
    config: Config,
    *,
    sticky: str | None,
    excluded: Collection[str],
    offset: int,
    rates: h.Rates | None = None,
) -> Choice | None:
    """The best hybrid score among usable accounts with a token and enough health.

    ``sticky`` (the conversation's last account) wins whenever it qualifies. If
    health alone rules out every account, the healthiest one with a token is
    chosen instead. Equal scores (fresh accounts) go to the account nearest
    ``offset`` (the pid offset), so parallel processes start on different ones.
    ``rates`` are ``config``'s (:meth:`.health.Rates.of`), when the caller keeps them.
    """
    if rates is None:
        rates = h.Rates.of(config.health_score, config.token_bucket)
    min_usable = config.health_score.min_usable
    n = len(accounts)
    assess, get = h.assess, tracks.get  # locals: looked up once, not per account
    best_score = weak_health = weak_score = -math.inf
    best_i = weak_i = -1
    for i, account in enumerate(accounts):
        account_id = account.id
        if account.disabled or account.needs_relogin or account_id in excluded:
            continue
        track = get(account_id, EMPTY_TRACK)
        cooldown = track.cooldown
        if cooldown is not None and cooldown.until > now:
            continue
        health, tokens, score = assess(track, now, rates)
        if tokens < 1:
            continue
        if health >= min_usable:
            if account_id == sticky:
                return i, "affinity", score
            if score > best_score or (
                score == best_score and (i - offset) % n < (best_i - offset) % n
            ):
                best_score, best_i = score, i
        elif (health, score) > (weak_health, weak_score) or (
            (health, score) == (weak_health, weak_score)
            and (i - offset) % n < (weak_i - offset) % n
        ):
            weak_health, weak_score, weak_i = health, score, i
    if best_i >= 0:
        return best_i, "score", best_score
    if weak_i >= 0:
        return weak_i, "healthiest", weak_score
    return None


def choose_in_order(
    accounts: Sequence[Account],
    tracks: Mapping[str, AccountTrack],
    now: float,
    *,
    cursor: str | None,
    stay: bool,
    offset: int,
    excluded: Collection[str],
    reason: PickReason,
) -> Choice | None:
    """The first usable account from the cursor's account (``stay``, sequential)
    or the one after it (round-robin), shifted by ``offset``.

    The cursor is an account id, so removing or reordering accounts never hands
    one account's turn to another; a cursor whose account is gone starts at 0.
    """
    n = len(accounts)
    start = offset
    for pos, account in enumerate(accounts):  # a plain loop: no generator to resume
        if account.id == cursor:
            start += pos + (0 if stay else 1)
            break
    for k in range(n):
        i = (start + k) % n
        account = accounts[i]
        if usable(account, tracks.get(account.id, EMPTY_TRACK), now, excluded):
            return i, reason, None
    return None
