"""The fake Qwen OAuth server itself: its knobs, and its command-line entry."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest

from qwen_oauth_mitm.config import DEFAULT_CLIENT_ID
from qwen_oauth_mitm.oauth import protocol as p
from qwen_oauth_mitm.oauth.fake_server import FakeQwenOAuth


def post(url: str, form: dict[str, str]) -> tuple[int, Any]:
    data = urllib.parse.urlencode(form).encode()
    try:
        with urllib.request.urlopen(url, data, timeout=10) as resp:
            status, body, ctype = resp.status, resp.read(), resp.headers["content-type"]
    except urllib.error.HTTPError as e:
        status, body, ctype = e.code, e.read(), e.headers["content-type"]
        e.close()
    text = body.decode()
    return status, json.loads(text) if "json" in ctype else text


def start(fake: FakeQwenOAuth, pkce: p.PkcePair) -> dict[str, Any]:
    req = p.device_code_request(fake.url, fake.client_id, pkce)
    status, body = post(req.url, dict(req.form))
    assert status == 200
    assert isinstance(body, dict)
    return body


def poll(fake: FakeQwenOAuth, device_code: str, pkce: p.PkcePair) -> tuple[int, Any]:
    req = p.token_poll_request(fake.url, fake.client_id, device_code, pkce)
    return post(req.url, dict(req.form))


def test_device_code_answer_has_every_field(fake: FakeQwenOAuth) -> None:
    body = start(fake, p.make_pkce())
    assert set(body) == {
        "device_code",
        "user_code",
        "verification_uri",
        "verification_uri_complete",
        "expires_in",
        "interval",
    }
    assert body["interval"] == 0.01
    assert body["verification_uri_complete"].startswith(fake.url + "/authorize?")
    fake.interval = None
    assert "interval" not in start(fake, p.make_pkce())


def test_manual_approval_and_denial(fake: FakeQwenOAuth) -> None:
    fake.outcome = "wait"
    pkce = p.make_pkce()
    first = start(fake, pkce)
    for _ in range(3):
        assert (
            poll(fake, first["device_code"], pkce)[1]["error"]
            == "authorization_pending"
        )
    fake.approve(first["user_code"])
    status, body = poll(fake, first["device_code"], pkce)
    assert status == 200
    assert body["access_token"] in fake.issued
    # a used device code cannot be used again
    assert poll(fake, first["device_code"], pkce)[1]["error"] == "invalid_grant"
    second = start(fake, pkce)
    fake.deny()
    assert poll(fake, second["device_code"], pkce)[1]["error"] == "access_denied"


def test_identity_travels_in_an_id_token(fake: FakeQwenOAuth) -> None:
    fake.identity = "zoe@example.com"
    fake.pending_polls = 0
    pkce = p.make_pkce()
    status, body = poll(fake, start(fake, pkce)["device_code"], pkce)
    assert status == 200
    assert p.identity_from(body) == "zoe@example.com"


@pytest.mark.parametrize(
    ("path", "form", "status", "error"),
    [
        (
            p.TOKEN_PATH,
            {"grant_type": "password", "client_id": "ID"},
            400,
            "unsupported_grant_type",
        ),
        (
            p.TOKEN_PATH,
            {"grant_type": "refresh_token", "client_id": "x"},
            400,
            "invalid_client",
        ),
        (p.DEVICE_CODE_PATH, {"client_id": "ID"}, 400, "invalid_request"),
        ("/nowhere", {}, 404, "not_found"),
    ],
)
def test_bad_requests(
    fake: FakeQwenOAuth, path: str, form: dict[str, str], status: int, error: str
) -> None:
    form = {k: (fake.client_id if v == "ID" else v) for k, v in form.items()}
    got_status, body = post(fake.url + path, form)
    assert got_status == status
    assert isinstance(body, dict)
    assert body["error"] == error


def test_refresh_failure_knobs(fake: FakeQwenOAuth) -> None:
    tokens = fake.issue_tokens()
    req = p.refresh_request(fake.url, fake.client_id, tokens["refresh_token"])
    fake.refresh_failure = "server_error"
    assert post(req.url, dict(req.form))[0] == 500
    fake.refresh_failure = "invalid_grant"
    assert post(req.url, dict(req.form))[1]["error"] == "invalid_grant"
    fake.refresh_failure = "unavailable"
    status, page = post(req.url, dict(req.form))
    assert status == 503
    assert "<html>" in page
    fake.refresh_failure = "drop"
    with pytest.raises(http.client.RemoteDisconnected):
        post(req.url, dict(req.form))
    fake.refresh_failure = None
    assert post(req.url, dict(req.form))[0] == 200
    assert fake.counts["refresh"] == 5
    fake.reset_counts()
    assert fake.counts["refresh"] == 0


def test_the_verification_page_answers(fake: FakeQwenOAuth) -> None:
    with urllib.request.urlopen(fake.url + "/authorize?user_code=1", timeout=10) as r:
        assert b"Fake Qwen login" in r.read()


def test_module_entry_prints_its_url_and_serves() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qwen_oauth_mitm.oauth.fake_server",
            "--interval",
            "0.1",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        req = p.device_code_request(url, DEFAULT_CLIENT_ID, p.make_pkce())
        status, body = post(req.url, dict(req.form))
        assert status == 200
        assert isinstance(body, dict)
        assert body["interval"] == 0.1
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
