"""End to end: the OAuth server down or slow while a token must be refreshed.

``home``'s token has expired; ``work``'s token is valid.

- Down (the connection closed unanswered): requests are served by ``work`` with no
  error; ``home`` is not marked for a new login, and after three failed refreshes
  in a row it cools down, so requests stop waiting for the OAuth server; once the
  server is back and ``home``'s turn comes again, it is refreshed and serves.
- Slow (longer than ``timeouts.refresh_seconds``), rotating refresh tokens as the
  real server does: requests stop waiting and are served by ``work``; the refresh
  goes on and saves the rotated refresh token, so ``home`` serves and keeps
  refreshing later (cut short, the new token would be lost, and the next refresh,
  sent with the retired one, would mark ``home`` for a new login).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from qwen_oauth_mitm.oauth.fake_server import FakeQwenOAuth
from qwen_oauth_mitm.paths import StatePaths
from qwen_oauth_mitm.portal import FakePortal
from qwen_oauth_mitm.store import accounts_file

from .harness import oauth_account, run_mitmdump, token_of, write_accounts

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(60)]

SLOW = 3.0
"""Seconds the slow OAuth server takes: far beyond the 0.5 s refresh timeout."""
COOLDOWN = 2
"""default_cooldown_seconds: how long three failures in a row cool an account."""


OPTIONS = [
    "--set", "qwen_rotation_strategy=round-robin",
    "--set", "qwen_timeouts_refresh_seconds=0.5",
    "--set", f"qwen_default_cooldown_seconds={COOLDOWN}",
]  # fmt: skip


# The server closes the connection unanswered, as one going down; a 503 page is
# the same transient failure to the token manager (tests/oauth).
def test_a_failed_refresh_fails_over_and_is_retried_later(
    tmp_path: Path,
    fake: FakeQwenOAuth,
    portal: FakePortal,
    paths: StatePaths,
) -> None:
    home = oauth_account(fake, "home", expires_in=-60)
    work = oauth_account(fake, "work")
    write_accounts(paths, [home, work])
    fake.refresh_failure = "drop"
    with run_mitmdump(tmp_path, fake, portal, OPTIONS) as proxy, proxy.client() as c:
        answer = c.responses.create(model="coder-model", input="hi")
        assert answer.output_text == portal.text
        assert fake.counts["refresh"] == 1
        assert [r.token for r in portal.requests] == [token_of(work)]
        stored = accounts_file(paths.accounts).read().get(home.id)
        assert stored is not None
        assert not stored.needs_relogin
        assert stored.access_token == home.access_token  # nothing half-written

        # Still down: each failed refresh counts as a failure (at no health
        # cost), and after three in a row home cools down, so requests stop
        # waiting for the OAuth server on its every turn.
        for i in range(4):
            answer = c.responses.create(model="coder-model", input=f"again {i}")
            assert answer.output_text == portal.text
        assert fake.counts["refresh"] == 3
        assert {r.token for r in portal.requests} == {token_of(work)}

        # The OAuth server is back: once home's cooldown is over, its turn
        # comes, its refresh is tried again and succeeds, and it serves.
        fake.refresh_failure, fake.refresh_delay = None, 0.0
        deadline = time.monotonic() + COOLDOWN + 5
        while fake.counts["refresh"] < 4:
            assert time.monotonic() < deadline, proxy.output()[-3000:]
            answer = c.responses.create(model="coder-model", input="later")
            assert answer.output_text == portal.text
            time.sleep(0.2)
        fresh = accounts_file(paths.accounts).read().get(home.id)
        assert fresh is not None
        assert not fresh.needs_relogin
        assert fresh.expires_at is not None
        assert fresh.expires_at > time.time()
        c.responses.create(model="coder-model", input="last")
        assert token_of(fresh) in {r.token for r in portal.requests}
        assert token_of(home) not in {r.token for r in portal.requests}
        for token in fake.issued:
            assert token not in proxy.output()


def test_a_slow_refresh_fails_over_and_keeps_the_rotated_refresh_token(
    tmp_path: Path,
    fake: FakeQwenOAuth,
    portal: FakePortal,
    paths: StatePaths,
) -> None:
    home = oauth_account(fake, "home", expires_in=-60)
    work = oauth_account(fake, "work")
    write_accounts(paths, [home, work])
    assert fake.rotate_refresh_tokens  # as the real server does
    fake.refresh_delay = SLOW
    # home's new tokens are due for a refresh at once: the refresh after the slow
    # one must be made, with the refresh token the slow one rotated.
    fake.token_lifetime = 60
    with run_mitmdump(tmp_path, fake, portal, OPTIONS) as proxy, proxy.client() as c:
        start = time.monotonic()
        answer = c.responses.create(model="coder-model", input="hi")
        assert time.monotonic() - start < SLOW - 1  # home was waited for 0.5 s
        assert answer.output_text == portal.text
        assert fake.counts["refresh"] == 1
        # While it runs, home's turns join it rather than start another.
        for i in range(2):
            answer = c.responses.create(model="coder-model", input=f"meanwhile {i}")
            assert answer.output_text == portal.text
        assert fake.counts["refresh"] == 1
        assert {r.token for r in portal.requests} == {token_of(work)}

        # No request waits for it any more, yet it finishes and is saved.
        deadline = time.monotonic() + SLOW + 5
        while (saved := accounts_file(paths.accounts).read().get(home.id)) is not None:
            if saved.refresh_token != home.refresh_token:
                break
            assert time.monotonic() < deadline, proxy.output()[-3000:]
            time.sleep(0.1)
        assert saved is not None
        assert saved.refresh_token is not None
        assert saved.refresh_token.get_secret_value() in fake.issued
        assert fake.counts["refresh"] == 1

        # The server is quick again: home serves, refreshing (due at once) with
        # the rotated refresh token, and stays logged in.
        fake.refresh_delay = 0.0
        deadline = time.monotonic() + COOLDOWN + 5
        while fake.counts["refresh"] < 3:
            assert time.monotonic() < deadline, proxy.output()[-3000:]
            answer = c.responses.create(model="coder-model", input="later")
            assert answer.output_text == portal.text
        fresh = accounts_file(paths.accounts).read().get(home.id)
        assert fresh is not None
        assert not fresh.needs_relogin
        assert fresh.refresh_token not in (home.refresh_token, saved.refresh_token)
        served = [r.token for r in portal.requests]
        assert token_of(home) not in served
        assert set(served) - {token_of(work)}  # home served, with new tokens
        for token in fake.issued:
            assert token not in proxy.output()


def test_shutting_down_waits_for_a_refresh_in_flight_to_save(
    tmp_path: Path,
    fake: FakeQwenOAuth,
    portal: FakePortal,
    paths: StatePaths,
) -> None:
    """Stopped (SIGTERM, as Ctrl-C) while a slow refresh runs: mitmdump waits for
    it and saves the rotated refresh token before it exits. Cut short, the old
    refresh token, which the server retired, would be all the file holds."""
    home = oauth_account(fake, "home", expires_in=-60)
    work = oauth_account(fake, "work")
    write_accounts(paths, [home, work])
    fake.refresh_delay = SLOW
    with run_mitmdump(tmp_path, fake, portal, OPTIONS) as proxy, proxy.client() as c:
        answer = c.responses.create(model="coder-model", input="hi")
        assert answer.output_text == portal.text  # served by work meanwhile
        assert fake.counts["refresh"] == 1
        saved = accounts_file(paths.accounts).read().get(home.id)
        assert saved is not None
        assert saved.refresh_token == home.refresh_token  # still under way
        proxy.process.terminate()
        assert proxy.process.wait(timeout=SLOW + 10) == 0, proxy.output()[-3000:]
    saved = accounts_file(paths.accounts).read().get(home.id)
    assert saved is not None
    assert saved.refresh_token is not None
    assert saved.refresh_token != home.refresh_token, proxy.output()[-3000:]
    assert saved.refresh_token.get_secret_value() in fake.issued
    assert not saved.needs_relogin
    assert "waiting up to 10 s for 1 token refresh" in proxy.output()
