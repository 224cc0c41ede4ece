"""The upstream client's pure parts: URLs, the request, quote-free messages,
content codings."""

from __future__ import annotations

import gzip
import zlib

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qwen_oauth_mitm.proxy.http11 import (
    build_request,
    content_codings,
    decoder,
    parse_url,
    quote_free,
)

TOKEN = "sk-live-0123456789abcdef"


@pytest.mark.parametrize(
    ("url", "key", "target", "host"),
    [
        ("https://portal.qwen.ai/v1/chat", ("https", "portal.qwen.ai", 443),
         "/v1/chat", "portal.qwen.ai"),
        ("HTTP://Example.COM", ("http", "example.com", 80), "/", "example.com"),
        ("http://127.0.0.1:8080/a?b=1&c", ("http", "127.0.0.1", 8080),
         "/a?b=1&c", "127.0.0.1:8080"),
        ("https://h:443/x", ("https", "h", 443), "/x", "h"),
        ("https://h:80/x", ("https", "h", 80), "/x", "h:80"),
        ("http://[::1]:9000/v1", ("http", "::1", 9000), "/v1", "[::1]:9000"),
    ],
)  # fmt: skip
def test_a_url_gives_its_pool_key_target_and_host(
    url: str, key: tuple[str, str, int], target: str, host: str
) -> None:
    assert parse_url(url) == (key, target, host)


@pytest.mark.parametrize(
    "url", ["ftp://h/x", "https:///x", "/v1/chat", "http://h:99999/"]
)
def test_a_url_that_is_no_http_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (urlsplit's own, for the port)
        parse_url(url)


def _fields(request: h11.Request) -> list[tuple[bytes, bytes]]:
    return list(request.headers.raw_items())


def test_the_request_has_our_host_and_length_and_no_caller_framing() -> None:
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "host": "evil.example",
        "Content-Length": "5",
        "Transfer-Encoding": "chunked",
        "X-A": "1",
    }
    request = build_request("POST", "/v1/chat", "h:8080", headers, b"{}")
    assert (request.method, request.target) == (b"POST", b"/v1/chat")
    assert _fields(request) == [
        (b"Host", b"h:8080"),
        (b"Authorization", f"Bearer {TOKEN}".encode()),
        (b"X-A", b"1"),
        (b"Content-Length", b"2"),
    ]


@pytest.mark.parametrize(
    ("method", "body", "length"),
    [("POST", b"", b"0"), ("GET", b"", None), ("GET", b"x", b"1"), ("PUT", b"", b"0")],
)
def test_a_content_length_goes_with_a_body_or_a_post(
    method: str, body: bytes, length: bytes | None
) -> None:
    fields = dict(_fields(build_request(method, "/", "h", {}, body)))
    assert fields.get(b"Content-Length") == length


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {TOKEN}\r\nX-Injected: 1"},
        {f"Bad Name {TOKEN}": "1"},
        {"Authorization": f"Bearer {TOKEN}é"},
    ],
    ids=["line break", "bad name", "not ascii"],
)
def test_a_header_that_cannot_be_sent_is_refused_unquoted(
    headers: dict[str, str],
) -> None:
    with pytest.raises(ValueError, match="cannot send this request") as caught:
        build_request("POST", "/", "h", headers, b"")
    assert TOKEN not in str(caught.value)


@pytest.mark.parametrize(
    ("message", "said"),
    [
        (f"illegal header line: b'Authorization: {TOKEN}'", "illegal header line"),
        (f"illegal chunk header: bytearray(b'{TOKEN}')", "illegal chunk header"),
        (f'Illegal header value b"{TOKEN}"', "Illegal header value"),
        (f"malformed chunk footer: b'{TOKEN}' (expected b'\\r\\n')",
         "malformed chunk footer"),
        ("peer closed connection without sending complete message body "
         "(received 3 bytes, expected 10)",
         "peer closed connection without sending complete message body "
         "(received 3 bytes, expected 10)"),
        (f"'{TOKEN}'", "RemoteProtocolError"),
    ],
)  # fmt: skip
def test_an_h11_message_is_cut_before_what_it_quotes(message: str, said: str) -> None:
    assert quote_free(h11.RemoteProtocolError(message)) == said


@pytest.mark.parametrize(
    ("values", "codings"),
    [
        ([], []),
        (["identity"], []),
        (["gzip"], ["gzip"]),
        (["GZIP, identity"], ["gzip"]),
        (["deflate", " gzip "], ["deflate", "gzip"]),
        (["gzip,,br"], ["gzip", "br"]),
    ],
)
def test_content_codings_in_the_order_applied(
    values: list[str], codings: list[str]
) -> None:
    assert content_codings(values) == codings


TEXT = b"data: hello\n\n" * 100


@pytest.mark.parametrize(
    ("coding", "encoded"),
    [
        ("gzip", gzip.compress(TEXT)),
        ("x-gzip", gzip.compress(TEXT)),
        ("deflate", zlib.compress(TEXT)),
        ("deflate", zlib.compress(TEXT, wbits=-zlib.MAX_WBITS)),
    ],
    ids=["gzip", "x-gzip", "deflate", "raw deflate"],
)
@given(cut=st.integers(0, 200))
def test_a_decoder_decodes_whatever_the_cut(
    coding: str, encoded: bytes, cut: int
) -> None:
    d = decoder(coding)
    assert d.decompress(encoded[:cut]) + d.decompress(encoded[cut:]) + d.flush() == TEXT


def test_an_unknown_coding_is_refused_unnamed() -> None:
    with pytest.raises(ValueError, match="unsupported content coding") as caught:
        decoder(TOKEN)
    assert TOKEN not in str(caught.value)
