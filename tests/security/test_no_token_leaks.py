"""No token anywhere a user (or a log collector) can read it, in one full run.

The run creates every kind of secret the project handles: two device logins with
the real ``qwen-oauth`` (device codes, PKCE verifiers, access and refresh tokens),
an API key (``add-key``), a refresh from the CLI that rotates the refresh token,
and through ``mitmdump`` a 401 answered by a refresh and a retry, a 429 and a 500
failing over, streamed and whole answers, and requests refused by the proxy. All
at the highest verbosity: ``QWEN_DEBUG=1``, ``qwen_debug``,
``termlog_verbosity=debug``, ``flow_detail=4`` (mitmdump prints every flow whole),
a ``log_file``, flows saved with ``-w``. The stand-in quotes the key it was sent
in each error it answers, as some gateways do.

Then everything readable is searched for every secret, taken from the fake OAuth
server's and the stand-in portal's own records: mitmdump's stdout and stderr, the
log file, the saved rotation state, every CLI command's output (errors included),
the flows file (raw, and each flow's comment, mark, metadata, request and answer
read back with mitmproxy's ``FlowReader``) and every answer the client got.

The client's own placeholder key is not a secret of ours, but it must never reach
the portal. Relayed flows lose it (with cookies and ``Proxy-Authorization``) in
the addon's ``request`` hook, so it is in none of them. Flows the proxy answers
itself (models, a 404, two 400s) keep the client's request as it came, as mitmproxy
records and prints any flow it sees: there, and only there, it shows.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mitmproxy import http as mitm_http
from mitmproxy import io as mitm_io
from tests.cli.run import run_cli
from tests.proxy.harness import run_mitmdump

from qwen_oauth_mitm.oauth.fake_server import FakeQwenOAuth
from qwen_oauth_mitm.portal import FakePortal
from qwen_oauth_mitm.portal.chat import Fault
from qwen_oauth_mitm.store import accounts_file

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(120)]

API_KEY = "sk-plan-key-0123456789abcdef"
TRACKER = "qwen-auth-tracker-state.json"
DUMMY = "dummy-client-key"  # what the harness's client sends as its API key
CHAT = {"model": "coder-model", "messages": [{"role": "user", "content": "hi"}]}


class EchoingPortal(FakePortal):
    """The stand-in, but each error it answers quotes the key it was sent, as
    some gateways do ("Incorrect API key provided: sk-...")."""

    def answer(self, token: str, body: Any, headers: dict[str, str]) -> Any:
        answer = super().answer(token, body, headers)
        if answer.status >= 400:
            quoted = f'"message": "key {token}: '.encode()
            answer.body = answer.body.replace(b'"message": "', quoted, 1)
            assert token.encode() in answer.body
        return answer


@pytest.fixture
def keyed_portal(fake: FakeQwenOAuth) -> Iterator[FakePortal]:
    """The stand-in accepting the fake OAuth server's tokens and :data:`API_KEY`."""
    with EchoingPortal(fake, keys=[API_KEY]) as p:
        yield p


class Captured:
    """Everything a user could read, by where it came from."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}

    def add(self, where: str, text: str | bytes) -> None:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        self.texts[f"{len(self.texts):02d} {where}"] = text  # keys: "NN where"

    def leaks(self, secrets: set[str]) -> list[tuple[str, str]]:
        """(where, secret's first 8 characters) for each secret found."""
        return [
            (where, secret[:8])
            for where, text in self.texts.items()
            for secret in secrets
            if secret in text
        ]


def _cli(
    args: list[str], environ: dict[str, str], seen: Captured, *, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    result = run_cli(args, environ, stdin=stdin, timeout=60)
    seen.add(f"qwen-oauth {' '.join(args)} stdout", result.stdout)
    seen.add(f"qwen-oauth {' '.join(args)} stderr", result.stderr)
    return result


def _token(accounts: Path, label: str) -> str:
    account = accounts_file(accounts).read().find(label)
    assert account is not None
    assert account.access_token is not None
    return account.access_token.get_secret_value()


def _answer(seen: Captured, what: str, r: httpx.Response) -> httpx.Response:
    seen.add(f"client got ({what}): headers", str(r.headers.multi_items()))
    seen.add(f"client got ({what}): body", r.content)
    return r


def _flows(path: Path, seen: Captured) -> list[mitm_http.HTTPFlow]:
    seen.add("flows file (raw)", path.read_bytes())
    flows: list[mitm_http.HTTPFlow] = []
    with path.open("rb") as f:
        for flow in mitm_io.FlowReader(f).stream():
            assert isinstance(flow, mitm_http.HTTPFlow)
            flows.append(flow)
            seen.add(f"flow {flow.id} comment", flow.comment)
            seen.add(f"flow {flow.id} marked", flow.marked)
            seen.add(f"flow {flow.id} metadata", json.dumps(flow.metadata, default=str))
            seen.add(f"flow {flow.id} request", _message(flow.request))
            if flow.response is not None:
                seen.add(f"flow {flow.id} response", _message(flow.response))
            if flow.error is not None:
                seen.add(f"flow {flow.id} error", flow.error.msg)
    return flows


def _message(m: mitm_http.Message) -> str:
    headers = "\n".join(f"{k!r}: {v!r}" for k, v in m.headers.fields)
    return headers + "\n\n" + (m.raw_content or b"").decode("utf-8", "replace")


def _drive(
    client: httpx.Client, portal: FakePortal, accounts: Path, seen: Captured
) -> None:
    """Requests through the proxy that make it refresh, fail over and refuse;
    with sequential rotation over work, home and plan."""
    auth = {"Authorization": f"Bearer {DUMMY}", "Cookie": "session=client-own"}

    def post(what: str, path: str, body: Any, status: int = 200) -> httpx.Response:
        r = client.post(f"https://portal.qwen.ai/v1{path}", json=body, headers=auth)
        assert r.status_code == status, (what, r.text)
        return _answer(seen, what, r)

    def get(what: str, path: str, status: int) -> None:
        r = client.get(f"https://portal.qwen.ai/v1{path}", headers=auth)
        assert r.status_code == status, (what, r.text)
        _answer(seen, what, r)

    responses = {"model": "coder-model", "input": "hi"}
    post("plain", "/responses", responses)
    portal.script(_token(accounts, "work"), Fault("401"))
    post("401, refresh, retry", "/responses", responses)
    portal.script(_token(accounts, "work"), Fault("429", retry_after=60))
    post("429 failover", "/responses", responses)
    portal.script(_token(accounts, "home"), Fault("500"))
    streamed = post("500 failover", "/responses", responses | {"stream": True})
    assert b"response.completed" in streamed.content
    post("chat", "/chat/completions", CHAT)
    post("chat stream", "/chat/completions", CHAT | {"stream": True})
    post("refused 400 (no messages)", "/chat/completions", {"model": "m"}, 400)
    portal.script(_token(accounts, "home"), Fault("500"))
    portal.script(API_KEY, Fault("500"))
    post("two 500s", "/responses", responses, 500)
    portal.script(_token(accounts, "home"), Fault("429", retry_after=60))
    portal.script(API_KEY, Fault("429", retry_after=60))
    post("all limited", "/responses", responses, 429)
    bad = client.post("https://portal.qwen.ai/v1/responses", content=b"{", headers=auth)
    assert _answer(seen, "not JSON", bad).status_code == 400
    get("models", "/models", 200)
    get("unknown path", "/files", 404)


def test_no_secret_in_anything_a_full_run_writes(
    tmp_path: Path, fake: FakeQwenOAuth, keyed_portal: FakePortal
) -> None:
    portal, seen = keyed_portal, Captured()
    accounts = tmp_path / "config" / "opencode" / "qwen-auth-accounts.json"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_")}
    environ.update(
        QWEN_OAUTH_BASE_URL=fake.url,
        QWEN_API_BASE_URL=portal.url,
        QWEN_DEBUG="1",
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        HOME=str(tmp_path),
        PYTHONUNBUFFERED="1",
    )

    # --- the CLI: logins, an API key, a rotating refresh, errors ------------------
    for label in ("work", "home"):
        login = _cli(
            ["login", "--no-browser", "--no-qr", "--label", label], environ, seen
        )
        assert login.returncode == 0, login.stderr
    key = _cli(["add-key", "--label", "plan"], environ, seen, stdin=API_KEY + "\n")
    assert key.returncode == 0, key.stderr
    before = fake.counts["refresh"]
    refreshed = _cli(["refresh", "work"], environ, seen)
    assert refreshed.returncode == 0, refreshed.stderr
    assert fake.counts["refresh"] == before + 1
    assert _cli(["refresh", "nobody"], environ, seen).returncode == 1
    listing = _cli(["accounts"], environ, seen)
    assert "plan" in listing.stdout

    # --- the proxy: failovers, a refresh on 401, streams, refusals ------------------
    log_file = tmp_path / "qwen.log"
    flows_file = tmp_path / "flows.mitm"
    options = [
        "-w", str(flows_file),
        "--set", f"qwen_log_file={log_file}",
        "--set", "qwen_debug=true",
        "--set", "qwen_rotation_strategy=sequential",  # work, home, plan in turn
        "--set", "qwen_max_rate_limit_wait_seconds=1",
        "--set", "store_streamed_bodies=true",
        "--set", "flow_detail=4",  # mitmdump prints every flow, headers and bodies
    ]  # fmt: skip
    with (
        run_mitmdump(
            tmp_path, fake, portal, options, env={"QWEN_DEBUG": "1"}, stderr_apart=True
        ) as proxy,
        proxy.http() as client,
    ):
        _drive(client, portal, accounts, seen)
    seen.add("mitmdump stdout", proxy.output())
    seen.add("mitmdump stderr", proxy.stderr())
    seen.add("log_file", log_file.read_text())
    seen.add("tracker state file", (accounts.parent / TRACKER).read_text())

    # --- after the proxy: the CLI sees what it did; an error path --------------------
    quiet = environ | {"QWEN_DEBUG": "0"}
    assert _cli(["accounts"], quiet, seen).returncode == 0
    assert _cli(["accounts"], environ, seen).returncode == 0
    fake.refresh_failure = "invalid_grant"
    dead = _cli(["refresh", "home"], environ, seen)
    assert dead.returncode == 1
    assert "qwen-oauth login --label home" in dead.stderr + dead.stdout
    flows = _flows(flows_file, seen)

    # --- the secrets, from the fake servers' own records ---------------------------
    issued = set(fake.issued)
    login_secrets = {
        value
        for request in fake.requests
        for name, value in request.form.items()
        if name in {"device_code", "code_verifier", "refresh_token"}
    }
    seen_by_portal = {r.token for r in portal.requests}
    assert seen_by_portal <= issued | {API_KEY}  # only real credentials went there
    assert API_KEY in seen_by_portal  # the API key was used
    assert len(seen_by_portal) >= 4  # work before and after its refresh, home, plan
    assert len(issued) == 8  # 2 logins, 2 refreshes (CLI, 401): access + refresh
    assert len(login_secrets) >= 6
    secrets = issued | login_secrets | {API_KEY}

    # The run produced what it should have, so the search below means something.
    comments = " | ".join(f.comment for f in flows)
    assert len(flows) == 12
    assert "retried after acct work (401)" in comments
    assert "failover from acct work (429)" in comments
    assert "failover from acct home (500)" in comments
    assert [f for f in flows if f.marked]  # the 429 to the client
    assert any("qwen" in f.metadata for f in flows)
    assert "refreshed the token" in log_file.read_text()
    assert sum(len(t) for t in seen.texts.values()) > 20_000

    assert seen.leaks(secrets) == []
    # The client's placeholder key: never upstream, in no log or answer. It is in
    # the flows file only as the client's own request header of the flows the
    # proxy answered itself (models, 404, two 400s), which mitmproxy records as it
    # records any flow; relayed flows lost it in the ``request`` hook.
    for request in portal.requests:
        assert DUMMY not in json.dumps(dict(request.headers))
        assert "session=client-own" not in json.dumps(dict(request.headers))
    answered_here = {
        f"flow {f.id} request" for f in flows if f.request.host == "portal.qwen.ai"
    }
    assert len(answered_here) == 4  # models, 404, two 400s
    where = {w.split(" ", 1)[1] for w, _ in seen.leaks({DUMMY})}
    assert where == answered_here | {"flows file (raw)", "mitmdump stdout"}
    # In mitmdump's own print of those flows (flow_detail=4), nowhere else.
    assert proxy.output().count(DUMMY) == len(answered_here)
