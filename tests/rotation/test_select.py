"""The two choosers, called directly."""

from __future__ import annotations

from qwen_oauth_mitm.config import Config
from qwen_oauth_mitm.rotation import health as h
from qwen_oauth_mitm.rotation.select import choose_hybrid, choose_in_order, usable
from qwen_oauth_mitm.rotation.simulation import fake_account
from qwen_oauth_mitm.rotation.state import EMPTY_TRACK, AccountTrack, Cooldown

T0 = 1_767_571_200.0
ACCOUNTS = [fake_account(f"acct_{i}") for i in range(4)]


def test_usable() -> None:
    cooling = AccountTrack(cooldown=Cooldown(until=T0 + 1, reason="rate_limit"))
    ended = AccountTrack(cooldown=Cooldown(until=T0, reason="quota"))
    a = ACCOUNTS[0]
    assert usable(a, EMPTY_TRACK, T0, ())
    assert usable(a, ended, T0, ())  # a cooldown ends at its "until"
    assert not usable(a, cooling, T0, ())
    assert not usable(a, EMPTY_TRACK, T0, {a.id})
    assert not usable(fake_account("x", disabled=True), EMPTY_TRACK, T0, ())
    assert not usable(fake_account("x", needs_relogin=True), EMPTY_TRACK, T0, ())


def test_hybrid_ties_go_to_the_account_at_the_offset() -> None:
    for offset in range(4):
        choice = choose_hybrid(
            ACCOUNTS, {}, T0, Config(), sticky=None, excluded=(), offset=offset
        )
        assert choice == (offset, "score", 1000.0)


def test_hybrid_healthiest_fallback_breaks_health_ties_by_score() -> None:
    tracks = {
        "acct_0": AccountTrack(health=30.0, tokens=10.0, tokens_at=T0),
        "acct_1": AccountTrack(health=30.0),  # full bucket: higher score
        "acct_2": AccountTrack(health=20.0),
        "acct_3": AccountTrack(health=30.0, tokens=0.0, tokens_at=T0),  # no token
    }
    choice = choose_hybrid(
        ACCOUNTS, tracks, T0, Config(), sticky="acct_2", excluded=(), offset=0
    )
    assert choice == (1, "healthiest", 60 + 500 + 360)


def test_in_order_stays_or_moves_on_from_the_cursor() -> None:
    def pick(**kw: object) -> int | None:
        choice = choose_in_order(
            ACCOUNTS,
            {},
            T0,
            excluded=(),
            reason="sequential",
            **kw,  # type: ignore[arg-type]
        )
        return None if choice is None else choice[0]

    assert pick(cursor="acct_2", stay=True, offset=0) == 2
    assert pick(cursor="acct_2", stay=False, offset=0) == 3
    assert pick(cursor="acct_3", stay=False, offset=0) == 0  # wraps around
    assert pick(cursor="acct_gone", stay=True, offset=0) == 0
    assert pick(cursor=None, stay=True, offset=6) == 2
    assert (
        choose_in_order(
            [],
            {},
            T0,
            cursor=None,
            stay=True,
            offset=0,
            excluded=(),
            reason="sequential",
        )
        is None
    )


def test_hybrid_with_rates_given_chooses_as_with_rates_computed() -> None:
    config = Config.model_validate({"token_bucket": {"max_tokens": 5}})
    tracks = {
        "acct_0": AccountTrack(tokens=1.5, tokens_at=T0 - 5, last_used=T0 - 5),
        "acct_1": AccountTrack(health=60.0, health_at=T0 - 900),
        "acct_2": AccountTrack(tokens=0.2, tokens_at=T0),
    }
    rates = h.Rates.of(config.health_score, config.token_bucket)
    computed = choose_hybrid(
        ACCOUNTS, tracks, T0, config, sticky=None, excluded=(), offset=0
    )
    given = choose_hybrid(
        ACCOUNTS, tracks, T0, config, sticky=None, excluded=(), offset=0, rates=rates
    )
    assert given == computed == (3, "score", 1000.0)
