"""The upstream client's pure parts: URLs, the request head (checked against h11's
own serializer and parser), quote-free messages, content codings."""

from __future__ import annotations

import gzip
import string
import zlib

import h11
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from qwen_oauth_mitm.proxy import http11
from qwen_oauth_mitm.proxy.http11 import (
    DROPPED,
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


def _parsed(head: bytes, body: bytes = b"") -> tuple[h11.Request, bytes]:
    """The request and body an h11 server reads from ``head`` and ``body``."""
    server = h11.Connection(h11.SERVER)
    server.receive_data(head + body)
    request = server.next_event()
    assert isinstance(request, h11.Request)
    received = b""
    while type(event := server.next_event()) is h11.Data:
        received += event.data
    assert type(event) is h11.EndOfMessage
    assert server.next_event() is h11.NEED_DATA  # nothing left over
    return request, received


def _fields(head: bytes, body: bytes) -> list[tuple[bytes, bytes]]:
    return list(_parsed(head, body)[0].headers.raw_items())


def test_the_request_has_our_host_and_length_and_no_caller_framing() -> None:
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "host": "evil.example",
        "Content-Length": "5",
        "Transfer-Encoding": "chunked",
        "X-A": "1",
        "connection": "close",
        "Keep-Alive": "timeout=1",
        "TE": "trailers",
        "Upgrade": "websocket",
        "Expect": "100-continue",
        "Proxy-Connection": "close",
        "X-B": "",
    }
    head = build_request("POST", "/v1/chat", "h:8080", headers, b"{}")
    request, body = _parsed(head, b"{}")
    assert (request.method, request.target, body) == (b"POST", b"/v1/chat", b"{}")
    assert request.headers.raw_items() == [
        (b"Host", b"h:8080"),
        (b"Authorization", f"Bearer {TOKEN}".encode()),
        (b"X-A", b"1"),
        (b"X-B", b""),
        (b"Content-Length", b"2"),
    ]


@pytest.mark.parametrize(
    ("method", "body", "length"),
    [("POST", b"", b"0"), ("GET", b"", None), ("GET", b"x", b"1"), ("PUT", b"", b"0")],
)
def test_a_content_length_goes_with_a_body_or_a_post(
    method: str, body: bytes, length: bytes | None
) -> None:
    fields = dict(_fields(build_request(method, "/", "h", {}, body), body))
    assert fields.get(b"Content-Length") == length


def test_the_request_line_is_checked_and_made_once_per_method_target_host() -> None:
    http11._start.cache_clear()
    first = build_request("GET", "/a?b", "h:1", {"Authorization": TOKEN}, b"")
    again = build_request("GET", "/a?b", "h:1", {"X": "other"}, b"x")
    start = b"GET /a?b HTTP/1.1\r\nHost: h:1\r\n"
    assert first.startswith(start)
    assert again.startswith(start)
    info = http11._start.cache_info()
    assert (info.misses, info.hits) == (1, 1)


_TCHARS = "!#$%&'*+-.^_`|~" + string.digits + string.ascii_letters
_names = st.text(_TCHARS, min_size=1, max_size=12).filter(
    lambda name: name.lower() not in DROPPED
)
_VCHARS = [chr(c) for c in range(1, 128) if chr(c) not in "\t\n\v\f\r "]


@st.composite
def _values(draw: st.DrawFn) -> str:
    """A field value h11 sends: words of visible ASCII (and the control characters
    h11 lets by), SP and HTAB runs between them, none at either end."""
    words = draw(st.lists(st.text(st.sampled_from(_VCHARS), min_size=1), max_size=4))
    gaps = st.sampled_from([" ", "\t", "  ", " \t "])
    return "".join((draw(gaps) if i else "") + w for i, w in enumerate(words))


@given(
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]),
    target=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1),
    host=st.sampled_from(["h", "portal.qwen.ai", "127.0.0.1:8080", "[::1]:9"]),
    headers=st.dictionaries(_names, _values(), max_size=10),
    body=st.binary(max_size=40),
)
def test_the_head_is_h11s_own_bytes_and_reads_back_as_given(
    method: str, target: str, host: str, headers: dict[str, str], body: bytes
) -> None:
    head = build_request(method, target, host, headers, body)
    fields = [("Host", host), *headers.items()]
    if body or method in ("POST", "PUT", "PATCH"):
        fields.append(("Content-Length", str(len(body))))
    h11_head = h11.Connection(h11.CLIENT).send(
        h11.Request(method=method, target=target, headers=fields)
    )
    assert head == h11_head
    request, received = _parsed(head, body)
    assert (request.method, request.target) == (method.encode(), target.encode())
    assert request.headers.raw_items() == [(k.encode(), v.encode()) for k, v in fields]
    assert received == body


_ODD = st.one_of(
    st.sampled_from(list(" \t\r\n\x00\x0b\x0c:é")),
    st.sampled_from(list('\x01\x1f\x7f\x80"(),/;=@[]{}')),
    st.characters(),
)
"""Characters at the edges of what h11 sends: whitespace, the line breaks and NUL,
controls, delimiters (no token characters), anything."""


@st.composite
def _spoilt(draw: st.DrawFn, valid: st.SearchStrategy[str]) -> str:
    """A valid name or value with up to two odd characters put in, often at an end."""
    text = draw(valid)
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.sampled_from([0, len(text)]) | st.integers(0, len(text)))
        text = text[:at] + draw(_ODD) + text[at:]
    return text


def _same_verdict_as_h11(name: str, value: str) -> None:
    try:
        h11.Request(method="GET", target="/", headers=[("Host", "h"), (name, value)])
    except (h11.LocalProtocolError, UnicodeEncodeError):
        h11_sends = False
    else:
        h11_sends = True
    try:
        build_request("GET", "/", "h", {name: value}, b"")
    except ValueError:
        we_send = False
    else:
        we_send = True
    assert we_send == h11_sends, (name, value)


@given(name=_spoilt(_names))
def test_a_name_is_refused_exactly_when_h11_refuses_it(name: str) -> None:
    assume(name.lower() not in DROPPED)
    _same_verdict_as_h11(name, "v")


@given(value=_spoilt(_values()))
def test_a_value_is_refused_exactly_when_h11_refuses_it(value: str) -> None:
    _same_verdict_as_h11("X-A", value)


_EVERY = [chr(c) for c in range(0x100)] + ["\u2028", "\U0001f600"]
"""Every character a Latin-1 header could carry, and two beyond."""


@pytest.mark.parametrize("shape", ["{c}", "{c}a", "a{c}", "a{c}b", "{c}:"])
def test_any_character_anywhere_in_a_name_gets_h11s_verdict(shape: str) -> None:
    for c in _EVERY:
        name = shape.format(c=c)
        if name.lower() not in DROPPED:
            _same_verdict_as_h11(name, "v")


@pytest.mark.parametrize(
    "shape", ["{c}", "{c}a", "a{c}", "a{c}b", "{c} a", "a {c}", "a {c} b", "a\t{c}"]
)
def test_any_character_anywhere_in_a_value_gets_h11s_verdict(shape: str) -> None:
    for c in _EVERY:
        _same_verdict_as_h11("X-A", shape.format(c=c))


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("Authorization", f"Bearer {TOKEN}\r\nX-Injected: 1", "has a line break"),
        ("Authorization", f"Bearer {TOKEN}\n", "has a line break"),
        ("Authorization", f"Bearer {TOKEN}\r", "has a line break"),
        ("Authorization", f"Bearer {TOKEN}\x00", "has a NUL"),
        ("Authorization", f" Bearer {TOKEN}", "begins or ends with whitespace"),
        ("Authorization", f"Bearer {TOKEN}\t", "begins or ends with whitespace"),
        ("Authorization", f"Bearer\x0b{TOKEN}", "has a vertical tab or a form feed"),
        ("Authorization", f"Bearer {TOKEN}é", "is not ASCII"),
    ],
    ids=["CRLF", "LF", "CR", "NUL", "leading space", "trailing tab", "VT", "not ascii"],
)
def test_a_bad_value_is_refused_by_its_header_name_unquoted(
    name: str, value: str, said: str
) -> None:
    with pytest.raises(ValueError, match="cannot send this request") as caught:
        build_request("POST", "/", "h", {"X-A": "1", name: value}, b"")
    assert f"the {name} header {said}" in str(caught.value)
    assert TOKEN not in str(caught.value)


@pytest.mark.parametrize(
    "name",
    [f"Bad Name {TOKEN}", f"{TOKEN}:", f"{TOKEN}é", "", f"{TOKEN}\r\nX-Injected"],
    ids=["space", "colon", "not ascii", "empty", "line break"],
)
def test_a_name_that_is_no_token_is_refused_unquoted(name: str) -> None:
    with pytest.raises(ValueError, match="a header name is not a token") as caught:
        build_request("POST", "/", "h", {name: "1"}, b"")
    assert TOKEN not in str(caught.value)


def _start_verdicts(method: str, target: str, host: str) -> tuple[bool, bool]:
    """Whether h11 and we send a request line and ``Host`` of these."""
    try:
        h11.Request(method=method, target=target, headers=[("Host", host)])
    except (h11.LocalProtocolError, UnicodeEncodeError):
        h11_sends = False
    else:
        h11_sends = True
    try:
        head = build_request(method, target, host, {}, b"")
    except ValueError:
        return h11_sends, False
    assert _parsed(head)[0].target == target.encode()  # and h11 reads it back
    return h11_sends, True


@pytest.mark.parametrize(
    ("method", "target", "host", "said"),
    [
        ("PO ST", "/", "h", "the method is not a token"),
        ("", "/", "h", "the method is not a token"),
        ("PÖST", "/", "h", "the method is not a token"),
        ("POST", "/a b", "h", "the target is not visible ASCII"),
        ("POST", "", "h", "the target is not visible ASCII"),
        ("POST", "/é", "h", "the target is not visible ASCII"),
        ("POST", "/\x7f", "h", "the target is not visible ASCII"),
        ("GET", "/", "h\r\nX: 1", "the Host header has a line break"),
        ("GET", "/", "hé", "the Host header is not ASCII"),
        ("GET", "/", " h", "the Host header begins or ends with whitespace"),
    ],
)
def test_a_method_target_or_host_h11_refuses_is_refused(
    method: str, target: str, host: str, said: str
) -> None:
    assert _start_verdicts(method, target, host) == (False, False)
    with pytest.raises(ValueError, match=f"cannot send this request: {said}$"):
        build_request(method, target, host, {}, b"")


@given(
    method=_spoilt(st.sampled_from(["GET", "POST", "M-SEARCH", "x~!"])),
    target=_spoilt(st.sampled_from(["/", "/v1/chat?a=1&b", "*", "http://h/x"])),
    host=_spoilt(st.sampled_from(["h", "portal.qwen.ai", "127.0.0.1:8080"])),
)
def test_a_method_target_or_host_gets_h11s_verdict(
    method: str, target: str, host: str
) -> None:
    h11_sends, we_send = _start_verdicts(method, target, host)
    assert we_send == h11_sends, (method, target, host)


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
