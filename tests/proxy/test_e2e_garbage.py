"""End to end: upstream answers that are garbage, or errors under HTTP 200.

The tests that read health run their own mitmdump with two accounts, ``home`` and
``work``, in sequential rotation (``home`` first), faults scripted by token at the
stand-in, and read the tracker state mitmdump saves as it stops: a failure that is
not the account's fault (a 5xx, garbage) leaves its health where it was (a success
would have raised it), a quota under a 200 costs the rate-limit penalty and cools
the account down. The others share one mitmdump and four API-key accounts of the
one-port stand-in (one of them is left in a quota cooldown), whose faults go to the
next requests whichever account makes them: the first attempt gets the fault, the
failover whatever comes next.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import openai
import pytest
from pydantic import SecretStr

from qwen_oauth_mitm.accounts import Account
from qwen_oauth_mitm.config import Config
from qwen_oauth_mitm.oauth.fake_server import FakeQwenOAuth
from qwen_oauth_mitm.paths import StatePaths
from qwen_oauth_mitm.portal import FakePortal, Fault, StandIn
from qwen_oauth_mitm.rotation import TrackerState
from qwen_oauth_mitm.rotation.health import current_health

from .harness import Proxy, oauth_account, run_mitmdump, token_of, write_accounts

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(60)]

HEALTH = Config().health_score
INITIAL = HEALTH.initial


@dataclass
class Run:
    proxy: Proxy
    portal: FakePortal
    paths: StatePaths
    accounts: dict[str, Account] = field(default_factory=dict)

    def tokens(self, label: str) -> str:
        return token_of(self.accounts[label])

    def served(self) -> list[tuple[str, int]]:
        """(account label, status) of every request the stand-in received."""
        label = {token_of(a): name for name, a in self.accounts.items()}
        return [(label.get(r.token, "?"), r.status) for r in self.portal.requests]

    def wait_for_log(self, text: str) -> None:
        deadline = time.monotonic() + 5
        while text not in self.proxy.output():
            assert time.monotonic() < deadline, self.proxy.output()[-3000:]
            time.sleep(0.05)

    def health(self, label: str) -> float:
        """After mitmdump stopped: the account's health as saved (without the
        passive recovery since)."""
        state = TrackerState.model_validate_json(self.paths.tracker_state.read_bytes())
        track = state.accounts[self.accounts[label].id]
        return current_health(track, track.health_at or time.time(), HEALTH)

    def cooldown(self, label: str) -> str | None:
        state = TrackerState.model_validate_json(self.paths.tracker_state.read_bytes())
        cooldown = state.accounts[self.accounts[label].id].cooldown
        return None if cooldown is None else cooldown.reason


@contextmanager
def two_accounts(
    tmp_path: Path,
    fake: FakeQwenOAuth,
    portal: FakePortal,
    paths: StatePaths,
    *,
    home: tuple[Fault, ...] = (),
    work: tuple[Fault, ...] = (),
) -> Iterator[Run]:
    accounts = {
        "home": oauth_account(fake, "home"),
        "work": oauth_account(fake, "work"),
    }
    write_accounts(paths, list(accounts.values()))
    portal.script(token_of(accounts["home"]), *home)
    portal.script(token_of(accounts["work"]), *work)
    options = ["--set", "qwen_rotation_strategy=sequential"]
    with run_mitmdump(tmp_path, fake, portal, options) as proxy:
        yield Run(proxy, portal, paths, accounts)
    # run_mitmdump has stopped it: its final save of the tracker state is done.


def test_an_html_504_fails_over_once_and_costs_no_health(
    tmp_path: Path, fake: FakeQwenOAuth, portal: FakePortal, paths: StatePaths
) -> None:
    with two_accounts(tmp_path, fake, portal, paths, home=(Fault("504"),)) as run:
        with run.proxy.client() as c:
            answer = c.responses.create(model="coder-model", input="hi")
        assert answer.output_text == portal.text
        assert run.served() == [("home", 504), ("work", 200)]
        run.wait_for_log("qwen · acct work · responses→chat · failover from acct home")
    assert run.health("home") == INITIAL  # the gateway failed, not the account
    assert run.health("work") == INITIAL + HEALTH.success_reward


def test_garbage_mid_stream_ends_it_failed_at_no_health_cost(
    tmp_path: Path, fake: FakeQwenOAuth, portal: FakePortal, paths: StatePaths
) -> None:
    fault = Fault("bad_sse", after_chunks=3)
    with (
        two_accounts(tmp_path, fake, portal, paths, home=(fault,)) as run,
        run.proxy.client() as c,
    ):
        with c.responses.create(model="coder-model", input="hi", stream=True) as s:
            events = list(s)
        types = [e.type for e in events]
        assert "response.output_text.delta" in types
        assert types[-2:] == ["error", "response.failed"]
        assert "response.completed" not in types
        assert "not JSON" in str(events[-2].model_dump())
        assert run.served() == [("home", 200)]  # the client had the start: no retry
    assert run.health("home") == INITIAL  # neither a success nor the account's fault


def test_a_quota_error_under_200_cools_the_account_down_like_a_429(
    tmp_path: Path, fake: FakeQwenOAuth, portal: FakePortal, paths: StatePaths
) -> None:
    fault = Fault("error_200", code="insufficient_quota")
    with (
        two_accounts(tmp_path, fake, portal, paths, home=(fault,)) as run,
        run.proxy.client() as c,
    ):
        answer = c.responses.create(model="coder-model", input="hi")
        assert answer.output_text == portal.text
        # A second request skips home: it cools down until the quota's reset.
        c.responses.create(model="coder-model", input="again")
        assert run.served() == [("home", 200), ("work", 200), ("work", 200)]
    assert run.cooldown("home") == "quota"
    assert run.health("home") == INITIAL + HEALTH.rate_limit_penalty


# --- one shared mitmdump ----------------------------------------------------------


class Shared:
    def __init__(self, standin: StandIn, proxy: Proxy) -> None:
        self.standin, self.proxy = standin, proxy

    def statuses_after(self, start: int) -> list[int]:
        return [r.status for r in self.standin.requests[start:]]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    tmp = tmp_path_factory.mktemp("garbage")
    keys = ["sk-one", "sk-two", "sk-three", "sk-four"]
    with StandIn(keys=keys, text="Hi there, world.") as standin:
        now = time.time()
        accounts = [
            Account(
                id=f"acct_{i}",
                label=f"key{i}",
                kind="key",
                access_token=SecretStr(key),
                added_at=now,
                updated_at=now,
            )
            for i, key in enumerate(keys)
        ]
        write_accounts(StatePaths(tmp / "config" / "opencode"), accounts)
        # Three failures in a row cool an account down: briefly, so that the
        # failures the tests cause never leave them all cooling at once.
        options = [
            "--set", "qwen_rotation_strategy=round-robin",
            "--set", "qwen_default_cooldown_seconds=1",
        ]  # fmt: skip
        with run_mitmdump(tmp, standin.auth, standin, options) as proxy:
            yield Shared(standin, proxy)


@pytest.fixture
def fresh(shared: Shared) -> Iterator[Shared]:
    yield shared
    shared.standin.clear_faults()


@pytest.mark.parametrize("kind", ["bad_json", "html_200"])
def test_a_200_that_is_not_json_fails_over_once_then_is_a_responses_error(
    fresh: Shared, kind: str
) -> None:
    fresh.standin.add_fault(Fault(kind), count=2)  # type: ignore[arg-type]
    start = len(fresh.standin.requests)
    with fresh.proxy.http() as http:
        r = http.post(
            "https://portal.qwen.ai/v1/responses",
            json={"model": "coder-model", "input": "hi"},
        )
    assert r.status_code == 502, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "not JSON" in error["message"]
    assert error["code"] == "bad_upstream_answer"
    assert fresh.statuses_after(start) == [200, 200]  # one failover, not more


@pytest.mark.parametrize(
    "fault",
    [
        Fault("bad_sse", after_chunks=0),
        Fault("error_200"),
        Fault("error_200", code="insufficient_quota"),
    ],
    ids=["not-json", "error-object", "quota"],
)
def test_a_stream_whose_first_event_is_bad_fails_over_unseen(
    fresh: Shared, fault: Fault
) -> None:
    fresh.standin.add_fault(fault)
    start = len(fresh.standin.requests)
    with (
        fresh.proxy.client() as c,
        c.responses.create(model="coder-model", input="hi", stream=True) as s,
    ):
        events = list(s)
    types = [e.type for e in events]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    assert "error" not in types
    assert "".join(deltas) == fresh.standin.text
    assert fresh.statuses_after(start) == [200, 200]


def test_a_chat_client_gets_a_chat_shaped_error_for_garbage(fresh: Shared) -> None:
    fresh.standin.add_fault(Fault("bad_json"), count=2)
    with fresh.proxy.client() as c:
        with pytest.raises(openai.APIStatusError) as caught:
            c.chat.completions.create(
                model="coder-model", messages=[{"role": "user", "content": "hi"}]
            )
        assert caught.value.status_code == 502
        body = json.loads(caught.value.response.text)
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert "not JSON" in body["error"]["message"]
        # A chat stream whose first event is an error object fails over too.
        fresh.standin.add_fault(Fault("error_200"))
        stream = c.chat.completions.create(
            model="coder-model",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
        )
        with stream:
            text = "".join(
                chunk.choices[0].delta.content or ""
                for chunk in stream
                if chunk.choices
            )
    assert text == fresh.standin.text


def test_a_stream_that_is_garbage_on_both_tries_is_an_http_error(
    fresh: Shared,
) -> None:
    """Nothing was sent yet: the client gets a 502 with a Responses error body,
    not a stream."""
    fresh.standin.add_fault(Fault("bad_sse", after_chunks=0), count=2)
    start = len(fresh.standin.requests)
    with fresh.proxy.client() as c, pytest.raises(openai.APIStatusError) as caught:
        c.responses.create(model="coder-model", input="hi", stream=True)
    assert caught.value.status_code == 502
    error = json.loads(caught.value.response.text)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "not JSON" in error["message"]
    assert fresh.statuses_after(start) == [200, 200]
