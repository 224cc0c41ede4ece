"""End to end: the OAuth server down or slow while a token must be refreshed.

``home``'s token has expired and its refresh fails (503 page, connection closed
unanswered, or slower than ``timeouts.refresh_seconds``); ``work``'s token is valid.
The request is served by ``work`` with no error; ``home`` is not marked for a new
login; once the OAuth server is back, ``home`` is refreshed and serves again.
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


@pytest.mark.parametrize("fault", ["unavailable", "drop", "slow"])
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

        # The OAuth server is back: the next request for home refreshes it.
        fake.refresh_failure, fake.refresh_delay = None, 0.0
        answers = [
            c.responses.create(model="coder-model", input=f"again {i}").output_text
            for i in range(2)
        ]
        assert answers == [portal.text] * 2
        tokens = [r.token for r in portal.requests]
        fresh = accounts_file(paths.accounts).read().get(home.id)
        assert fresh is not None
        assert not fresh.needs_relogin
        assert fresh.access_token is not None
        assert fresh.expires_at is not None
        assert fresh.expires_at > time.time()
        assert token_of(fresh) in tokens[1:]  # home served with its new token
        assert token_of(home) not in tokens  # the expired one never went out
        for token in fake.issued:
            assert token not in proxy.output()
