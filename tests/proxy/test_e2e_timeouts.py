"""End to end: upstream timeouts (first byte, between chunks) and QWEN_DEBUG=1.

One mitmdump for most tests (one account, tiny timeouts, QWEN_DEBUG=1 and the
terminal log at info, so debug lines can only come from the addon's own stderr
handler); the failover test needs two accounts and gets its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from qwen_oauth_mitm.accounts import Account
from qwen_oauth_mitm.oauth.fake_server import FakeQwenOAuth
from qwen_oauth_mitm.paths import StatePaths
from qwen_oauth_mitm.portal import FakePortal, Fault

from .harness import Proxy, oauth_account, run_mitmdump, token_of, write_accounts

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

TIMEOUTS = [
    "--set", "qwen_timeouts_first_byte_seconds=0.5",
    "--set", "qwen_timeouts_between_chunks_seconds=0.5",
]  # fmt: skip
"""Tiny, and connect_seconds stays at its 10 s default: the first-byte deadline
must start when the request is sent, not when the connection is made."""
STALL = 5.0
"""How long the stand-in stalls: far beyond every timeout, so a test that
passes quickly shows the timeout, not the stall's end."""


class Shared:
    def __init__(
        self, fake: FakeQwenOAuth, portal: FakePortal, proxy: Proxy, account: Account
    ) -> None:
        self.fake, self.portal, self.proxy = fake, portal, proxy
        self.token = token_of(account)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    tmp = tmp_path_factory.mktemp("timeouts")
    with (
        FakeQwenOAuth(interval=0.01, pending_polls=1) as fake,
        FakePortal(fake, text="Hi there.") as portal,
    ):
        account = oauth_account(fake, "solo")
        write_accounts(StatePaths(tmp / "config" / "opencode"), [account])
        options = [*TIMEOUTS, "--set", "termlog_verbosity=info"]
        with run_mitmdump(
            tmp, fake, portal, options, env={"QWEN_DEBUG": "1"}, stderr_apart=True
        ) as proxy:
            yield Shared(fake, portal, proxy, account)


def test_a_slow_stream_within_the_gap_limit_completes(shared: Shared) -> None:
    """Six chunks 0.15 s apart: longer than first_byte_seconds in all, but no gap
    reaches between_chunks_seconds."""
    shared.portal.script(shared.token, Fault("slow", delay=0.15))
    with shared.proxy.client() as c:
        start = time.monotonic()
        with c.responses.create(model="coder-model", input="hi", stream=True) as s:
            types = [event.type for event in s]
        assert time.monotonic() - start > 0.6
    assert types[-1] == "response.completed"


def test_a_responses_stream_that_stalls_ends_failed_promptly(shared: Shared) -> None:
    shared.portal.script(shared.token, Fault("slow", delay=STALL))
    with shared.proxy.client() as c:
        start = time.monotonic()
        with c.responses.create(model="coder-model", input="hi", stream=True) as s:
            types = [event.type for event in s]
        assert time.monotonic() - start < STALL - 2
    assert types[0] == "response.created"
    assert types[-2:] == ["error", "response.failed"]
    assert "response.completed" not in types


def test_a_chat_stream_that_stalls_is_cut_promptly(shared: Shared) -> None:
    shared.portal.script(shared.token, Fault("slow", delay=STALL))
    with shared.proxy.client() as c:
        start = time.monotonic()
        stream = c.chat.completions.create(
            model="coder-model",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
        )
        with pytest.raises(openai.APIError), stream:
            for _ in stream:
                pass
        assert time.monotonic() - start < STALL - 2


def test_qwen_debug_logs_each_request_to_stderr_without_tokens(
    shared: Shared,
) -> None:
    with shared.proxy.client() as c:
        answer = c.responses.create(model="coder-model", input="hi")
    assert answer.output_text == "Hi there."
    deadline = time.monotonic() + 5
    while "upstream 200 after" not in shared.proxy.stderr():
        assert time.monotonic() < deadline, shared.proxy.stderr()[-2000:]
        time.sleep(0.05)
    err = shared.proxy.stderr()
    assert " DEBUG qwen_oauth_mitm.proxy: flow " in err
    assert "POST portal.qwen.ai/v1/responses" in err
    assert "responses request (stream=False) relayed to" in err
    assert f"account solo: POST {shared.portal.url}/chat/completions" in err
    # The terminal log stays at info: no debug line there.
    assert "relayed to" not in shared.proxy.output()
    assert shared.fake.issued
    for token in shared.fake.issued:
        assert token not in err
        assert token not in shared.proxy.output()


def test_a_hang_before_the_headers_fails_over_to_the_next_account(
    tmp_path: Path, fake: FakeQwenOAuth
) -> None:
    with FakePortal(fake) as portal:
        home, work = oauth_account(fake, "home"), oauth_account(fake, "work")
        write_accounts(StatePaths(tmp_path / "config" / "opencode"), [home, work])
        portal.script(token_of(home), Fault("hang", delay=STALL))
        options = [*TIMEOUTS, "--set", "qwen_rotation_strategy=sequential"]
        with (
            run_mitmdump(tmp_path, fake, portal, options) as proxy,
            proxy.client() as c,
        ):
            start = time.monotonic()
            answer = c.responses.create(model="coder-model", input="hi")
            assert time.monotonic() - start < STALL - 2
            assert answer.output_text == portal.text
            assert [r.token for r in portal.requests] == [
                token_of(home),
                token_of(work),
            ]
            deadline = time.monotonic() + 5
            while "failover from acct home (timeout)" not in proxy.output():
                assert time.monotonic() < deadline, proxy.output()[-2000:]
                time.sleep(0.05)
            assert "upstream no answer within 0.5 s" in proxy.output()
