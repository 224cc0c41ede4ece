"""End to end: failover, waits, refresh and broken streams through mitmdump."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from qwen_oauth_mitm.oauth.fake_server import FakeQwenOAuth
from qwen_oauth_mitm.paths import StatePaths
from qwen_oauth_mitm.portal import FakePortal, Fault

from .harness import oauth_account, run_mitmdump, token_of, write_accounts

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


@pytest.mark.parametrize("stream", [False, True])
def test_a_429_fails_over_to_the_next_account(
    tmp_path: Path,
    fake: FakeQwenOAuth,
    portal: FakePortal,
    paths: StatePaths,
    stream: bool,
) -> None:
    home, work = oauth_account(fake, "home"), oauth_account(fake, "work")
    write_accounts(paths, [home, work])
    portal.script(token_of(home), Fault("429", retry_after=30))
    options = ["--set", "qwen_rotation_strategy=sequential"]
    with run_mitmdump(tmp_path, fake, portal, options) as proxy, proxy.client() as c:
        if stream:
            with c.responses.create(model="coder-model", input="hi", stream=True) as s:
                deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
            assert "".join(deltas) == portal.text
        else:
            answer = c.responses.create(model="coder-model", input="hi")
            assert answer.output_text == portal.text
        assert portal.statuses(token_of(home)) == [429]
        assert portal.statuses(token_of(work)) == [200]
        deadline = time.monotonic() + 5
        while "failover from acct home (429)" not in proxy.output():
            assert time.monotonic() < deadline, proxy.output()[-2000:]
            time.sleep(0.05)
        assert "qwen · acct work · responses→chat" in proxy.output()


@pytest.mark.parametrize(("max_wait", "succeeds"), [(5, True), (1, False)])
def test_when_all_are_limited_the_proxy_waits_up_to_the_limit(
    tmp_path: Path,
    fake: FakeQwenOAuth,
    portal: FakePortal,
    paths: StatePaths,
    max_wait: int,
    succeeds: bool,
) -> None:
    accounts = [oauth_account(fake, "a"), oauth_account(fake, "b")]
    write_accounts(paths, accounts)
    for account in accounts:
        portal.script(token_of(account), Fault("429", retry_after=2))
    options = ["--set", f"qwen_max_rate_limit_wait_seconds={max_wait}"]
    with run_mitmdump(tmp_path, fake, portal, options) as proxy, proxy.http() as http:
        start = time.monotonic()
        r = http.post(
            "https://portal.qwen.ai/v1/responses",
            json={"model": "coder-model", "input": "hi"},
        )
        elapsed = time.monotonic() - start
    if succeeds:
        assert r.status_code == 200, r.text
        assert 1.8 < elapsed < 5
        assert sorted(portal.statuses()) == [200, 429, 429]
    else:
        assert r.status_code == 429, r.text
        assert int(r.headers["retry-after"]) >= 1
        message = r.json()["error"]["message"]
        assert "a:" in message
        assert "b:" in message
        assert elapsed < 1.5
        assert portal.statuses() == [429, 429]


def test_a_401_refreshes_once_and_retries(
    tmp_path: Path, fake: FakeQwenOAuth, portal: FakePortal, paths: StatePaths
) -> None:
    account = oauth_account(fake, "work")
    write_accounts(paths, [account])
    portal.script(token_of(account), Fault("401"))
    with run_mitmdump(tmp_path, fake, portal) as proxy, proxy.client() as c:
        answer = c.responses.create(model="coder-model", input="hi")
    assert answer.output_text == portal.text
    assert fake.counts["refresh"] == 1
    assert [r.status for r in portal.requests] == [401, 200]
    assert portal.requests[1].token != token_of(account)


def test_an_expired_token_is_refreshed_once_for_20_parallel_requests(
    tmp_path: Path, fake: FakeQwenOAuth, portal: FakePortal, paths: StatePaths
) -> None:
    account = oauth_account(fake, "work", expires_in=-60)
    write_accounts(paths, [account])
    fake.refresh_delay = 0.3
    with run_mitmdump(tmp_path, fake, portal) as proxy, proxy.client() as c:

        def ask(_: int) -> str:
            return c.responses.create(model="coder-model", input="hi").output_text

        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(ask, range(20)))
    assert answers == [portal.text] * 20
    assert fake.counts["refresh"] == 1
    assert len(portal.requests) == 20
    assert token_of(account) not in {r.token for r in portal.requests}


def test_a_responses_stream_cut_midway_ends_failed(
    tmp_path: Path, fake: FakeQwenOAuth, portal: FakePortal, paths: StatePaths
) -> None:
    account = oauth_account(fake, "work")
    write_accounts(paths, [account])
    portal.script(token_of(account), Fault("drop", after_chunks=3))
    with run_mitmdump(tmp_path, fake, portal) as proxy, proxy.client() as c:
        start = time.monotonic()
        with c.responses.create(model="coder-model", input="hi", stream=True) as s:
            types = [event.type for event in s]
        assert time.monotonic() - start < 5
    assert "response.output_text.delta" in types
    assert types[-2:] == ["error", "response.failed"]
    assert "response.completed" not in types


def test_a_chat_stream_cut_midway_is_a_closed_stream(
    tmp_path: Path, fake: FakeQwenOAuth, portal: FakePortal, paths: StatePaths
) -> None:
    account = oauth_account(fake, "work")
    write_accounts(paths, [account])
    portal.script(token_of(account), Fault("drop", after_chunks=3))
    with run_mitmdump(tmp_path, fake, portal) as proxy, proxy.client() as c:
        stream = c.chat.completions.create(
            model="coder-model",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
        )
        with pytest.raises(openai.APIError), stream:
            for _ in stream:
                pass


def test_proactive_refresh_renews_an_expiring_token_without_a_request(
    tmp_path: Path, fake: FakeQwenOAuth, portal: FakePortal, paths: StatePaths
) -> None:
    account = oauth_account(fake, "work", expires_in=60)  # inside the 300 s window
    write_accounts(paths, [account])
    options = ["--set", "qwen_proactive_refresh=true"]
    with run_mitmdump(tmp_path, fake, portal, options) as proxy:
        deadline = time.monotonic() + 10
        while fake.counts["refresh"] < 1:
            assert time.monotonic() < deadline, proxy.output()[-2000:]
            time.sleep(0.05)
        log = proxy.output()
    assert portal.requests == []
    for token in fake.issued:
        assert token not in log


def test_a_client_that_hangs_up_while_waiting_spends_no_quota(
    tmp_path: Path, fake: FakeQwenOAuth, portal: FakePortal, paths: StatePaths
) -> None:
    account = oauth_account(fake, "a")
    write_accounts(paths, [account])
    portal.script(token_of(account), Fault("429", retry_after=2))
    options = ["--set", "qwen_max_rate_limit_wait_seconds=30"]
    with run_mitmdump(tmp_path, fake, portal, options) as proxy:
        with proxy.http(timeout=0.8) as http, pytest.raises(httpx.ReadTimeout):
            http.post(
                "https://portal.qwen.ai/v1/responses",
                json={"model": "coder-model", "input": "hi"},
            )
        time.sleep(2.5)  # past the cooldown: an abandoned wait would now send
        assert portal.statuses() == [429]
        assert "abandoned" in proxy.output()
