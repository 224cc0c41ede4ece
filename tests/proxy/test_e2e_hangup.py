"""End to end: a client that hangs up in the middle of a stream.

The stand-in streams slowly (about 5 s in all); the client reads the first events
and closes its connection. mitmproxy closes its relay connection, the relay cancels
the request, and the forwarder closes the upstream response: the stand-in's next
write fails long before its stream would have ended. The addon drops the flow's job.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from qwen_oauth_mitm.oauth.fake_server import FakeQwenOAuth
from qwen_oauth_mitm.paths import StatePaths
from qwen_oauth_mitm.portal import FakePortal, Fault

from .harness import oauth_account, run_mitmdump, token_of, write_accounts

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(60)]

WORDS = 50
DELAY = 0.1
"""Between the stand-in's chunks: its stream lasts WORDS * DELAY = 5 s."""


@pytest.mark.parametrize("route", ["responses", "chat/completions"])
def test_a_client_that_hangs_up_mid_stream_closes_the_upstream_stream(
    tmp_path: Path, fake: FakeQwenOAuth, paths: StatePaths, route: str
) -> None:
    text = " ".join(f"word{i}" for i in range(WORDS))
    with FakePortal(fake, text=text) as portal:
        account = oauth_account(fake, "work")
        write_accounts(paths, [account])
        portal.script(token_of(account), Fault("slow", delay=DELAY))
        body: dict[str, object] = {"model": "coder-model", "stream": True}
        if route == "responses":
            body["input"] = "hi"
        else:
            body["messages"] = [{"role": "user", "content": "hi"}]
        options = ["--set", "qwen_debug=true"]  # the addon's debug lines too
        with run_mitmdump(tmp_path, fake, portal, options) as proxy:
            start = time.monotonic()
            with (
                proxy.http() as http,
                http.stream(
                    "POST", f"https://portal.qwen.ai/v1/{route}", json=body
                ) as r,
            ):
                assert r.status_code == 200
                seen = b""
                for chunk in r.iter_raw():
                    seen += chunk
                    if seen.count(b"word") >= 2:
                        break  # then hang up, mid-stream
            deadline = start + WORDS * DELAY - 1.5
            while portal.hangups < 1:
                assert time.monotonic() < deadline, proxy.output()[-3000:]
                time.sleep(0.05)
            while "relayed flows open" not in proxy.output():
                assert time.monotonic() < deadline + 1, proxy.output()[-3000:]
                time.sleep(0.05)
            log = proxy.output()
        assert "the client went away" in log  # the relay or the error hook saw it
        assert "cut; 0 relayed flows open" in log
        assert portal.statuses() == [200]
