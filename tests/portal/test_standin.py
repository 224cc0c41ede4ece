"""The one-command stand-in: OAuth + chat + admin API on one 127.0.0.1 port."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from qwen_oauth_mitm.config import DEFAULT_CLIENT_ID
from qwen_oauth_mitm.oauth.protocol import (
    DEVICE_CODE_PATH,
    DEVICE_GRANT_TYPE,
    REFRESH_GRANT_TYPE,
    TOKEN_PATH,
    make_pkce,
)
from qwen_oauth_mitm.portal import StandIn
from qwen_oauth_mitm.portal.__main__ import READY
from qwen_oauth_mitm.portal.standin import IDENTITY_DOMAIN

CLIENT_ID = DEFAULT_CLIENT_ID
CHAT = {"model": "coder-model", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with StandIn(interval=0.01, pending_polls=2, keys=["sk-key"]) as s:
        yield s


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=10) as client:
        yield client


def _login(standin: StandIn, http: httpx.Client) -> dict[str, Any]:
    pkce = make_pkce()
    r = http.post(
        standin.base_url + DEVICE_CODE_PATH,
        data={
            "client_id": CLIENT_ID,
            "scope": "openid profile email model.completion",
            "code_challenge": pkce.challenge,
            "code_challenge_method": "S256",
        },
    )
    assert r.status_code == 200, r.text
    device = r.json()
    assert device["verification_uri_complete"].startswith(standin.base_url)
    assert http.get(device["verification_uri"]).status_code == 200
    poll = {
        "grant_type": DEVICE_GRANT_TYPE,
        "client_id": CLIENT_ID,
        "device_code": device["device_code"],
    }
    bad = http.post(standin.base_url + TOKEN_PATH, data=poll | {"code_verifier": "x"})
    assert bad.json()["error"] == "invalid_grant"  # PKCE is checked
    errors = []
    for _ in range(10):
        r = http.post(
            standin.base_url + TOKEN_PATH, data=poll | {"code_verifier": pkce.verifier}
        )
        if r.status_code == 200:
            return dict(r.json())
        errors.append(r.json()["error"])
    raise AssertionError(errors)


def _chat(
    standin: StandIn, http: httpx.Client, token: str, body: dict[str, Any] = CHAT
) -> httpx.Response:
    return http.post(
        standin.url + "/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
    )


def _refresh(standin: StandIn, http: httpx.Client, refresh: str) -> httpx.Response:
    return http.post(
        standin.base_url + TOKEN_PATH,
        data={
            "grant_type": REFRESH_GRANT_TYPE,
            "client_id": CLIENT_ID,
            "refresh_token": refresh,
        },
    )


def _stats(standin: StandIn, http: httpx.Client) -> dict[str, Any]:
    return dict(http.get(standin.base_url + "/admin/stats").json())


def _fault(standin: StandIn, http: httpx.Client, **spec: Any) -> httpx.Response:
    return http.post(standin.base_url + "/admin/faults", json=spec)


def test_listens_on_loopback_only(standin: StandIn) -> None:
    assert standin.base_url.startswith("http://127.0.0.1:")
    assert standin.url == standin.base_url + "/v1"
    assert standin.auth.url == standin.base_url


def test_device_login_refresh_rotation_and_revocation(
    standin: StandIn, http: httpx.Client
) -> None:
    first = _login(standin, http)
    second = _login(standin, http)
    user1, user2 = (f"user{n}@{IDENTITY_DOMAIN}" for n in (1, 2))
    assert standin.account_of(first["access_token"]) == user1
    assert standin.account_of(second["access_token"]) == user2
    assert _chat(standin, http, first["access_token"]).status_code == 200

    renewed = _refresh(standin, http, first["refresh_token"])
    assert renewed.status_code == 200
    new = renewed.json()
    assert new["refresh_token"] != first["refresh_token"]  # rotating
    assert standin.account_of(new["access_token"]) == user1
    assert _chat(standin, http, new["access_token"]).status_code == 200
    retired = _refresh(standin, http, first["refresh_token"])
    assert retired.json()["error"] == "invalid_grant"

    r = http.post(standin.base_url + "/admin/revoke", json={"account": user1})
    assert r.status_code == 200
    assert _refresh(standin, http, new["refresh_token"]).json()["error"] == (
        "invalid_grant"
    )
    assert _chat(standin, http, new["access_token"]).status_code == 401
    assert _chat(standin, http, second["access_token"]).status_code == 200

    stats = _stats(standin, http)
    assert stats["accounts"][user1]["statuses"] == {"200": 2, "401": 1}
    assert stats["accounts"][user2]["statuses"] == {"200": 1}
    assert stats["oauth"]["device_code"] == 2
    assert stats["oauth"]["refresh"] == 3
    assert stats["oauth"]["token_poll"] >= 2 * 3  # pending twice, then approved


def test_next_login_identity_can_be_chosen(
    standin: StandIn, http: httpx.Client
) -> None:
    http.post(standin.base_url + "/admin/login", json={"identity": "me@example.org"})
    tokens = _login(standin, http)
    assert standin.account_of(tokens["access_token"]) == "me@example.org"


def test_stream_text_multibyte_reasoning_and_usage(
    standin: StandIn, http: httpx.Client
) -> None:
    r = _chat(standin, http, "sk-key", CHAT | {"stream": True, "enable_thinking": True})
    assert r.status_code == 200
    assert "你好".encode() in r.content  # raw UTF-8, as the portal sends it
    events = [
        json.loads(line.removeprefix(b"data: "))
        for line in r.content.split(b"\n")
        if line.startswith(b"data: {")
    ]
    deltas = [c["choices"][0]["delta"] for c in events if c["choices"]]
    reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    text = "".join(d.get("content") or "" for d in deltas)
    assert reasoning
    assert text == standin.text
    first_text = next(i for i, d in enumerate(deltas) if d.get("content"))
    assert all("reasoning_content" not in d for d in deltas[first_text:])
    usage = events[-1]["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    assert r.content.endswith(b"data: [DONE]\n\n")


def test_whole_answer_and_tool_call(standin: StandIn, http: httpx.Client) -> None:
    whole = _chat(standin, http, "sk-key").json()
    assert whole["choices"][0]["message"]["content"] == standin.text
    tool = {"type": "function", "function": {"name": "weather", "parameters": {}}}
    called = _chat(standin, http, "sk-key", CHAT | {"tools": [tool]}).json()
    [call] = called["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "weather"
    assert called["choices"][0]["finish_reason"] == "tool_calls"


def test_cached_tokens_follow_a_conversation_per_account(
    standin: StandIn, http: httpx.Client
) -> None:
    a = _login(standin, http)["access_token"]
    b = _login(standin, http)["access_token"]
    turn1 = {
        "model": "coder-model",
        "messages": [
            {"role": "system", "content": "You are a careful assistant. " * 20},
            {"role": "user", "content": "hi"},
        ],
    }
    turn2 = turn1 | {
        "messages": [
            *turn1["messages"],
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "and now?"},
        ]
    }

    def usage(token: str, body: dict[str, Any]) -> dict[str, Any]:
        return dict(_chat(standin, http, token, body).json()["usage"])

    first = usage(a, turn1)
    assert first["prompt_tokens_details"]["cached_tokens"] == 0
    again = usage(a, turn2)
    assert again["prompt_tokens_details"]["cached_tokens"] == first["prompt_tokens"]
    assert again["prompt_tokens"] > first["prompt_tokens"]
    other = usage(b, turn2)  # another account has no cache of it
    assert other["prompt_tokens_details"]["cached_tokens"] == 0

    stats = _stats(standin, http)["accounts"]
    assert stats[f"user1@{IDENTITY_DOMAIN}"]["cached_tokens"] == first["prompt_tokens"]
    assert stats[f"user2@{IDENTITY_DOMAIN}"]["cached_tokens"] == 0


def test_faults_for_the_next_requests(standin: StandIn, http: httpx.Client) -> None:
    r = _fault(standin, http, kind="429", retry_after=7, count=2)
    assert r.status_code == 200, r.text
    assert _chat(standin, http, "sk-unknown").status_code == 401  # takes no fault
    for _ in range(2):
        limited = _chat(standin, http, "sk-key")
        assert limited.status_code == 429
        assert limited.headers["Retry-After"] == "7"
    assert _chat(standin, http, "sk-key").status_code == 200
    stats = _stats(standin, http)["accounts"]["sk-key"]
    assert stats["statuses"] == {"429": 2, "200": 1}
    assert stats["faults"] == {"429": 2}
    assert _stats(standin, http)["recent"][-1]["status"] == 200


def test_faults_for_one_account_until_cleared(
    standin: StandIn, http: httpx.Client
) -> None:
    a = _login(standin, http)["access_token"]
    b = _login(standin, http)["access_token"]
    user1 = f"user1@{IDENTITY_DOMAIN}"
    assert _fault(standin, http, kind="quota", account=user1, count=0).is_success
    for _ in range(3):
        r = _chat(standin, http, a)
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "insufficient_quota"
        assert _chat(standin, http, b).status_code == 200
    assert http.delete(standin.base_url + "/admin/faults").is_success
    assert _chat(standin, http, a).status_code == 200


@pytest.mark.parametrize(
    ("kind", "status"), [("401", 401), ("500", 500), ("quota", 429)]
)
def test_error_faults(
    standin: StandIn, http: httpx.Client, kind: str, status: int
) -> None:
    assert _fault(standin, http, kind=kind, token="sk-key").is_success
    assert _chat(standin, http, "sk-key").status_code == status
    assert _chat(standin, http, "sk-key").status_code == 200


def test_drop_and_slow_streams(standin: StandIn, http: httpx.Client) -> None:
    _fault(standin, http, kind="drop", after_chunks=2)
    with pytest.raises(httpx.RemoteProtocolError):
        _chat(standin, http, "sk-key", CHAT | {"stream": True})
    _fault(standin, http, kind="slow", delay=0.1)
    start = time.monotonic()
    r = _chat(standin, http, "sk-key", CHAT | {"stream": True})
    assert r.status_code == 200
    assert time.monotonic() - start > 1.0  # about 20 chunks, 0.1 s apart
    assert _stats(standin, http)["accounts"]["sk-key"]["faults"] == {
        "drop": 1,
        "slow": 1,
    }


@pytest.mark.parametrize(
    "spec",
    [{"kind": "nope"}, {"kind": "429", "count": -1}, {"kind": "429", "bogus": 1}],
)
def test_bad_fault_specs_are_400(
    standin: StandIn, http: httpx.Client, spec: dict[str, Any]
) -> None:
    assert _fault(standin, http, **spec).status_code == 400
    assert _stats(standin, http)["faults_pending"] == 0


def _replies(standin: StandIn, http: httpx.Client, body: Any) -> httpx.Response:
    return http.post(standin.base_url + "/admin/replies", json=body)


def test_scripted_replies_through_the_admin_api(
    standin: StandIn, http: httpx.Client
) -> None:
    tools = [{"type": "function", "function": {"name": "read", "parameters": {}}}]
    body = CHAT | {"tools": tools}
    replies = [
        {"tool": "read", "arguments": {"filePath": "/tmp/a"}, "id": "call_a"},
        {"tool": "read"},
        {"text": "Done."},
    ]
    r = _replies(standin, http, {"replies": replies})
    assert r.json() == {"queued": 3, "pending": 3}
    assert _stats(standin, http)["replies_pending"] == 3
    calls = [_chat(standin, http, "sk-key", body).json() for _ in range(2)]
    [first], [second] = (c["choices"][0]["message"]["tool_calls"] for c in calls)
    assert (first["id"], first["function"]["name"]) == ("call_a", "read")
    assert json.loads(first["function"]["arguments"]) == {"filePath": "/tmp/a"}
    assert json.loads(second["function"]["arguments"]) == {}
    message = _chat(standin, http, "sk-key", body).json()["choices"][0]["message"]
    assert message["content"] == "Done."
    assert _stats(standin, http)["replies_pending"] == 0
    _replies(standin, http, {"replies": [{"text": "never used"}]})
    assert http.delete(standin.base_url + "/admin/replies").is_success
    assert _stats(standin, http)["replies_pending"] == 0


@pytest.mark.parametrize(
    "body",
    [
        [{"text": "a"}],
        {"replies": {"text": "a"}},
        {"replies": [{"text": "a"}], "extra": 1},
        {"replies": [{"text": 1}]},
        {"replies": [{"tool": ""}]},
        {"replies": [{"tool": "read", "arguments": []}]},
        {"replies": [{"tool": "read", "id": 3}]},
        {"replies": [{"tool": "read", "bogus": 1}]},
        {"replies": [{"text": "ok"}, {"nope": "x"}]},
    ],
)
def test_bad_replies_are_400(standin: StandIn, http: httpx.Client, body: Any) -> None:
    r = _replies(standin, http, body)
    assert r.status_code == 400, r.text
    assert _stats(standin, http)["replies_pending"] == 0


def test_stats_reset_and_unknown_paths(standin: StandIn, http: httpx.Client) -> None:
    _chat(standin, http, "sk-key")
    assert _stats(standin, http)["requests"] == 1
    assert http.delete(standin.base_url + "/admin/stats").is_success
    assert _stats(standin, http)["requests"] == 0
    assert http.get(standin.base_url + "/admin/nope").status_code == 404
    assert http.get(standin.base_url + "/v1/nope").status_code == 404
    assert http.get(standin.base_url + "/").json()["QWEN_API_BASE_URL"] == standin.url


def test_module_prints_ready_line_and_stops_on_sigterm(http: httpx.Client) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "qwen_oauth_mitm.portal", "--interval", "0.01"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        assert line.startswith(READY)
        url = line.removeprefix(READY).strip()
        assert url.startswith("http://127.0.0.1:")
        assert http.get(url + "/admin/stats").json()["requests"] == 0
        process.terminate()
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
