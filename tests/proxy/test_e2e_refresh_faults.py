"""End to end: the OAuth server down or slow while a token must be refreshed.

``home``'s token has expired and its refresh fails (the connection closed
unanswered, or slower than ``timeouts.refresh_seconds``); ``work``'s token is valid.
Requests are served by ``work`` with no error; ``home`` is not marked for a new
login, and after three failed refreshes in a row it cools down, so requests stop
waiting for the OAuth server; once the server is back and ``home``'s turn comes
again, it is refreshed and serves.
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

SLOW = 4.0
"""Seconds the slow OAuth server takes: far beyond the 0.5 s refresh timeout."""
COOLDOWN = 2
"""default_cooldown_seconds: how long three failures in a row cool an account."""


# "drop": the server closes the connection unanswered, as one going down; a 503
# page is the same transient failure to the token manager (tests/oauth).
@pytest.mark.parametrize("fault", ["drop", "slow"])
def test_a_failed_refresh_fails_over_and_is_retried_later(
    tmp_path: Path,
    fake: FakeQwenOAuth,
    portal: FakePortal,
    paths: StatePaths,
    fault: str,
) -> None:
    home = oauth_account(fake, "home", expires_in=-60)
    work = oauth_account(fake, "work")
    write_accounts(paths, [home, work])
    if fault == "slow":
        fake.refresh_delay = SLOW
        # It answers in the end: a refresh token it rotated then would be lost.
        fake.rotate_refresh_tokens = False
    else:
        fake.refresh_failure = fault  # type: ignore[assignment]
    options = [
        "--set", "qwen_rotation_strategy=round-robin",
        "--set", "qwen_timeouts_refresh_seconds=0.5",
        "--set", f"qwen_default_cooldown_seconds={COOLDOWN}",
    ]  # fmt: skip
    with run_mitmdump(tmp_path, fake, portal, options) as proxy, proxy.client() as c:
        start = time.monotonic()
        answer = c.responses.create(model="coder-model", input="hi")
        assert time.monotonic() - start < SLOW - 1
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
