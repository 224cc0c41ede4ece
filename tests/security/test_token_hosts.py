"""Tokens only go to allowed hosts, end to end.

A login or refresh answer whose ``resource_url`` names another host is refused,
and an account that names one (an accounts file from an older version, a
hand-edited one) is skipped. The proof that no token left: the named host is a
recording listener on 127.0.0.1 (see :mod:`.evil`), and after the real
``qwen-oauth`` and ``mitmdump`` ran it has had no connection at all.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tests.proxy.harness import oauth_account, run_mitmdump, token_of, write_accounts

from qwen_oauth_mitm.cli.commands import import_qwen_code
from qwen_oauth_mitm.cli.common import Env
from qwen_oauth_mitm.config import Config
from qwen_oauth_mitm.errors import QwenError
from qwen_oauth_mitm.oauth.fake_server import FakeQwenOAuth
from qwen_oauth_mitm.paths import StatePaths
from qwen_oauth_mitm.portal import FakePortal
from qwen_oauth_mitm.store import accounts_file

from .evil import EvilListener

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


def _no_token_in(fake: FakeQwenOAuth, *texts: str) -> None:
    assert fake.issued, "no token was issued: the check would prove nothing"
    for text in texts:
        for token in fake.issued:
            assert token not in text


def test_the_recording_listener_sees_a_leak(evil: EvilListener) -> None:
    # The other tests assert that it saw nothing; it must be able to see something.
    with socket.create_connection(("127.0.0.1", evil.port)) as s:
        s.sendall(b"Authorization: Bearer leaked")
    assert len(evil.connections()) == 1


@pytest.mark.parametrize(
    "resource",
    [
        "127.0.0.1:{port}",
        "http://127.0.0.1:{port}/v1",
        "portal.qwen.ai@127.0.0.1:{port}",
    ],
)
def test_login_refuses_tokens_for_another_host(
    resource: str, fake: FakeQwenOAuth, evil: EvilListener, tmp_path: Path
) -> None:
    fake.resource_url = resource.format(port=evil.port)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_")}
    environ.update(
        QWEN_OAUTH_BASE_URL=fake.url,
        XDG_CONFIG_HOME=str(tmp_path / "xdg"),
        HOME=str(tmp_path),
    )
    result = subprocess.run(
        [sys.executable, "-m", "qwen_oauth_mitm", "login", "--no-browser", "--no-qr"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert f"refused tokens for {fake.resource_url!r}" in result.stderr
    _no_token_in(fake, result.stdout, result.stderr)
    assert not (tmp_path / "xdg" / "opencode" / "qwen-auth-accounts.json").exists()
    assert evil.connections() == []


@pytest.mark.parametrize("spare", [True, False])
def test_a_refresh_answer_for_another_host_is_refused_and_the_client_told(
    spare: bool,
    tmp_path: Path,
    fake: FakeQwenOAuth,
    portal: FakePortal,
    paths: StatePaths,
    evil: EvilListener,
) -> None:
    work = oauth_account(fake, "work", expires_in=-60)  # must refresh first
    others = [oauth_account(fake, "spare")] if spare else []
    write_accounts(paths, [work, *others])
    named = f"127.0.0.1:{evil.port}"
    fake.resource_url = named
    options = ["--set", "qwen_rotation_strategy=sequential"]  # work, then spare
    with run_mitmdump(tmp_path, fake, portal, options) as proxy, proxy.http() as http:
        r = http.post(
            "https://portal.qwen.ai/v1/responses",
            json={"model": "coder-model", "input": "hi"},
        )
    assert evil.connections() == []
    assert fake.counts["refresh"] == 1
    if spare:  # served by the account that has a valid token
        assert r.status_code == 200
        assert [q.token for q in portal.requests] == [token_of(others[0])]
    else:  # told why, with the host it refused
        assert r.status_code == 502
        message = r.json()["error"]["message"]
        assert f"account 'work' has no usable token: refused tokens for {named!r}" in (
            message
        )
        assert portal.requests == []
    log = proxy.output()
    assert f"refused tokens for {named!r}" in log
    stored = accounts_file(paths.accounts).read().get("acct_work")
    assert stored is not None
    assert stored.resource_url == "portal.qwen.ai"  # nothing of the answer kept
    assert stored.access_token == work.access_token
    assert not stored.needs_relogin  # refused, not dead: retried later
    _no_token_in(fake, log, r.text)


@pytest.mark.parametrize(
    "resource",
    ["http://127.0.0.1:{port}", "portal.qwen.ai@127.0.0.1:{port}"],
)
def test_an_account_naming_another_host_is_never_sent_there(
    resource: str,
    tmp_path: Path,
    fake: FakeQwenOAuth,
    paths: StatePaths,
    evil: EvilListener,
) -> None:
    named = resource.format(port=evil.port)
    account = oauth_account(fake, "old").model_copy(update={"resource_url": named})
    write_accounts(paths, [account])
    # No base_url: the account's own host decides, as in production.
    with run_mitmdump(tmp_path, fake, None) as proxy, proxy.http() as http:
        r = http.post(
            "https://portal.qwen.ai/v1/responses",
            json={"model": "coder-model", "input": "hi"},
            headers={"Authorization": "Bearer dummy-client-key"},
        )
    assert evil.connections() == []
    assert evil.received == b""
    assert r.status_code == 502
    message = r.json()["error"]["message"]
    assert repr(named) in message
    assert "not sent there" in message
    _no_token_in(fake, r.text, proxy.output())


def test_import_of_qwen_code_credentials_for_another_host_is_refused(
    tmp_path: Path, evil: EvilListener
) -> None:
    creds = tmp_path / "oauth_creds.json"
    creds.write_text(
        json.dumps(
            {
                "access_token": "at-imported-secret-1",
                "refresh_token": "rt-imported-secret-1",
                "resource_url": f"127.0.0.1:{evil.port}",
                "expiry_date": 1,
            }
        )
    )
    env = Env(
        paths=StatePaths(tmp_path / "opencode"),
        config=Config(),
        environ={"HOME": str(tmp_path)},
        stdin=io.StringIO(),
        stdout=io.StringIO(),
        stderr=io.StringIO(),
    )
    with pytest.raises(
        QwenError, match=f"refused tokens for '127.0.0.1:{evil.port}'"
    ) as e:
        import_qwen_code(env, label=None, file=creds)
    assert "secret" not in str(e.value)
    assert not env.paths.accounts.exists()
    assert evil.connections() == []
