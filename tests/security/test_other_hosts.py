"""Flows to other hosts pass through the addon untouched, byte for byte.

The same raw requests go through ``mitmdump`` with the addon and through a plain
``mitmdump`` (the baseline: whatever mitmproxy itself does to a flow, such as
turning an absolute-form request line into origin-form, is not ours). A recording
server on 127.0.0.1 must get the same bytes from both, with the client's own
``Authorization``, cookies and keys, and the client must get the same bytes back.
The requests look like ours (``/v1/responses``, ``/v1/chat/completions``,
``/v1/models``), and the server shares 127.0.0.1 with the configured stand-in
portal: only its port differs.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from tests.proxy.harness import (
    mitmdump_args,
    oauth_account,
    run_mitmdump,
    wait_for_port,
    write_accounts,
)

from qwen_oauth_mitm.oauth.fake_server import FakeQwenOAuth
from qwen_oauth_mitm.paths import StatePaths
from qwen_oauth_mitm.portal import FakePortal

from .origin import Origin, self_signed_tls

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(60)]

CLIENT_KEY = "client-own-key-0123456789abcdef"
BODY = b'{"model":"coder-model","input":"hi","stream":true}'
ANSWER_BODY = b'{"id":"resp_other","output_text":"not from Qwen"}'
ANSWER = (
    b"HTTP/1.1 201 Created\r\n"
    b"X-Mixed-CASE: Keep\r\n"
    b"Set-Cookie: a=1\r\n"
    b"Set-Cookie: b=2\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: " + str(len(ANSWER_BODY)).encode() + b"\r\n"
    b"Connection: close\r\n"
    b"\r\n" + ANSWER_BODY
)  # fmt: skip
PATHS = ["/v1/responses?x=1", "/v1/chat/completions", "/v1/models"]


def _request(target: str, host: str) -> bytes:
    method = b"GET" if target.endswith("/models") else b"POST"
    body = b"" if method == b"GET" else BODY
    return (
        method + b" " + target.encode() + b" HTTP/1.1\r\n"
        b"Host: " + host.encode() + b"\r\n"
        b"Authorization: Bearer " + CLIENT_KEY.encode() + b"\r\n"
        b"Cookie: session=client-own\r\n"
        b"X-Api-Key: client-own-x-api-key\r\n"
        b"X-Mixed-CASE: Value\r\n"
        b"X-Dup: 1\r\n"
        b"X-Dup: 2\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        b"Connection: close\r\n"
        b"\r\n" + body
    )  # fmt: skip


def _read_all(conn: socket.socket) -> bytes:
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    return data


def _via_http(proxy_port: int, origin_port: int, path: str) -> bytes:
    """An absolute-form request to the proxy (plain HTTP proxying)."""
    host = f"127.0.0.1:{origin_port}"
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=10) as conn:
        conn.sendall(_request(f"http://{host}{path}", host))
        return _read_all(conn)


def _via_https(proxy_port: int, origin_port: int, path: str, ca: Path) -> bytes:
    """CONNECT, then the request inside TLS with mitmproxy's certificate."""
    host = f"127.0.0.1:{origin_port}"
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=10) as conn:
        conn.sendall(f"CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(1)
        assert head.startswith(b"HTTP/1.1 200"), head
        context = ssl.create_default_context(cafile=str(ca))
        with context.wrap_socket(conn, server_hostname="127.0.0.1") as tls:
            tls.sendall(_request(path, host))
            return _read_all(tls)


@contextmanager
def _plain_mitmdump(tmp: Path) -> Iterator[tuple[int, Path]]:
    """mitmdump without the addon: (port, CA file)."""
    tmp.mkdir()
    log = tmp / "mitmdump.log"
    environ = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    args = mitmdump_args(tmp, ["--set", "ssl_insecure=true"], script=None)
    with log.open("wb") as out:
        process = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=environ
        )
    try:
        yield wait_for_port(log, process), tmp / "mitmproxy-ca-cert.pem"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_flows_to_other_hosts_are_untouched_byte_for_byte(
    tmp_path: Path, fake: FakeQwenOAuth, portal: FakePortal, paths: StatePaths
) -> None:
    write_accounts(paths, [oauth_account(fake, "work")])
    options = ["--set", "ssl_insecure=true"]  # the origin's self-signed certificate
    tls = self_signed_tls(tmp_path)
    with (
        Origin(ANSWER) as plain_origin,
        Origin(ANSWER, tls) as tls_origin,
        run_mitmdump(tmp_path, fake, portal, options) as ours,
        _plain_mitmdump(tmp_path / "plain") as (plain_port, plain_ca),
    ):
        ours_ca = ours.confdir / "mitmproxy-ca-cert.pem"
        got: dict[str, list[bytes]] = {"ours": [], "plain": []}
        for name, port, ca in (
            ("ours", ours.port, ours_ca),
            ("plain", plain_port, plain_ca),
        ):
            for path in PATHS:
                got[name].append(_via_http(port, plain_origin.port, path))
                got[name].append(_via_https(port, tls_origin.port, path, ca))
    # What the origins got: the same from both proxies, in the same order.
    n = len(PATHS)
    assert len(plain_origin.requests) == len(tls_origin.requests) == 2 * n
    assert plain_origin.requests[:n] == plain_origin.requests[n:]
    assert tls_origin.requests[:n] == tls_origin.requests[n:]
    # ... and, inside TLS, exactly what the client sent.
    host = f"127.0.0.1:{tls_origin.port}"
    assert tls_origin.requests[:n] == [_request(path, host) for path in PATHS]
    for raw in plain_origin.requests + tls_origin.requests:
        assert f"Authorization: Bearer {CLIENT_KEY}".encode() in raw
        assert b"Cookie: session=client-own" in raw
        assert b"X-Dup: 1\r\nX-Dup: 2\r\n" in raw
    # What the client got: the same from both proxies, the origin's very bytes.
    assert got["ours"] == got["plain"]
    assert got["ours"] == [ANSWER] * len(got["ours"])
    # The addon took none of them: no account was used, no token sent.
    assert portal.requests == []
    assert fake.counts["refresh"] == 0
