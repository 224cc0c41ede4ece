"""The pure parts of the upstream client (:mod:`.upstream`): no I/O.

- :func:`parse_url`: a URL's pool key, request target and ``Host`` header;
- :func:`build_request`: the request head as sent (``Host`` and ``Content-Length``
  set by it alone), checked as h11 would check it;
- :func:`quote_free`: a parser's error message without what it quotes (h11 quoted
  the offending line, which may carry a token; llhttp's reasons quote nothing,
  but are cut all the same);
- :func:`content_codings` and :func:`decoder`: ``Content-Encoding`` (gzip,
  deflate, identity; RFC 9110 §8.4).

The answer is parsed in :mod:`.answer`. These raise ``ValueError`` (messages that
quote no header value); the client turns it into its own errors.
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Iterable, Mapping
from typing import Protocol
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}

type PoolKey = tuple[str, str, int]
"""Where a connection goes: scheme, host, port."""

DROPPED = frozenset(
    {"host", "content-length"}  # the client sets them itself
    | {"transfer-encoding", "te", "connection", "keep-alive", "proxy-connection"}
    | {"upgrade", "expect"}
)
"""A caller's headers that are never sent: the two the client sets itself, and
those that change the connection's semantics (framing, keep-alive, a protocol
switch, ``100-continue``), which the client neither does nor expects in the
answer (an upgrade or an early ``100`` it would not wait for)."""

_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
"""A field name or a method: an RFC 9110 §5.6.2 token (h11's ``_abnf.token``)."""
_TARGET = re.compile(r"[\x21-\x7e]+")
"""A request target as h11 checks it (``_abnf.request_target``): visible ASCII."""
_VALUE = re.compile(r"(?:[^\x00\t\n\v\f\r ]+(?:[ \t]+[^\x00\t\n\v\f\r ]+)*)?")
"""A field value as h11 checks it (``_abnf.field_value``) in ASCII text (h11 encodes
a ``str`` as ASCII: no obs-text): RFC 9110 §5.5, but h11 lets control characters
by, except NUL, CR, LF, VT, FF (its issue #57). SP and HTAB only inside."""
_SIZED = frozenset({"POST", "PUT", "PATCH"})  # a Content-Length even for no body


@functools.lru_cache(maxsize=64)
def parse_url(url: str) -> tuple[PoolKey, str, str]:
    """The pool key, the request target and the ``Host`` header of ``url``."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in DEFAULT_PORTS or not host:
        raise ValueError(f"not an http(s) URL with a host: {scheme}://...")
    port = parts.port or DEFAULT_PORTS[scheme]
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    authority = f"[{host}]" if ":" in host else host
    if port != DEFAULT_PORTS[scheme]:
        authority = f"{authority}:{port}"
    return (scheme, host, port), target, authority


def build_request(
    method: str, target: str, host: str, headers: Mapping[str, str], body: bytes
) -> bytes:
    """The request head: ``method target HTTP/1.1``, ``Host`` first, ``headers`` in
    their order (but :data:`DROPPED`), then a ``Content-Length`` for a body (or any
    POST, PUT, PATCH), and the blank line: the body follows. ``ValueError`` for a
    method, target, host or header h11 would not send (a line break in a value, a
    name that is no token, anything not ASCII), naming no value.

    Why not ``h11.Request``: it checks every header on every request, and h11's
    serializing follows (~36 µs per request in a micro-benchmark, some
    ~135 µs inside mitmdump, all on the time to first byte: issue #8; ours ~9 µs).
    Here each ``name: value`` line is checked and encoded once, as h11 would, and
    cached: the same few pairs come on every request, the ``Authorization`` value
    changes per account and refresh. The bytes are h11's (tests compare them)."""
    parts = [_start(method, target, host)]
    parts += [_line(name, value) for name, value in headers.items()]
    if body or method in _SIZED:
        parts.append(b"Content-Length: %d\r\n" % len(body))
    parts.append(b"\r\n")
    return b"".join(parts)


@functools.lru_cache(maxsize=64)
def _start(method: str, target: str, host: str) -> bytes:
    """The request line and ``Host`` line, checked as h11 checks them (its
    ``Request``; the tests hold our verdict to h11's): the method a token, the
    target visible ASCII (no spaces), the host a field value, all ASCII."""
    if not _TOKEN.fullmatch(method):
        raise ValueError("cannot send this request: the method is not a token")
    if not _TARGET.fullmatch(target):
        raise ValueError("cannot send this request: the target is not visible ASCII")
    _check_value("Host", host)
    return f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n".encode("ascii")


@functools.lru_cache(maxsize=256)
def _line(name: str, value: str) -> bytes:
    """``name: value`` and a CRLF, or nothing for a name in :data:`DROPPED`. The
    cache holds recent ``Authorization`` values (tokens the process holds anyway)."""
    if name.lower() in DROPPED:
        return b""
    if not _TOKEN.fullmatch(name):  # not named: it may be a misplaced value
        raise ValueError("cannot send this request: a header name is not a token")
    _check_value(name, value)
    return f"{name}: {value}\r\n".encode("ascii")


def _check_value(name: str, value: str) -> None:
    """``ValueError`` naming the header, not quoting the value, unless ``value``
    is one h11 would send (:data:`_VALUE`, ASCII)."""
    if not (value.isascii() and _VALUE.fullmatch(value)):
        raise ValueError(f"cannot send this request: the {name} header {_fault(value)}")


def _fault(value: str) -> str:
    """Why :data:`_VALUE` refused ``value``, quoting none of it."""
    if not value.isascii():
        return "is not ASCII"
    if "\r" in value or "\n" in value:
        return "has a line break"
    if "\x00" in value:
        return "has a NUL"
    if value != value.strip(" \t"):
        return "begins or ends with whitespace"
    return "has a vertical tab or a form feed"


def quote_free(error: Exception) -> str:
    """``error``'s message cut before its first quote: h11 quoted the offending
    line (``illegal header line: b'Authorization: Bearer ...'``), and a parser's
    message is never passed on unread."""
    text = re.split("['\"]", str(error), maxsplit=1)[0]
    text = re.sub(r"(bytearray\()?b$", "", text).rstrip(" :(")
    return text or type(error).__name__


def content_codings(values: Iterable[str]) -> list[str]:
    """The codings of ``Content-Encoding`` values, in the order applied,
    ``identity`` left out."""
    codings = [v.strip().lower() for value in values for v in value.split(",")]
    return [c for c in codings if c and c != "identity"]


class Decoder(Protocol):
    def decompress(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


def decoder(coding: str) -> Decoder:
    """A decoder for ``coding`` (one of :func:`content_codings`); ``ValueError``
    if it is none we know (not named: a header value is never quoted)."""
    if coding in ("gzip", "x-gzip"):
        return zlib.decompressobj(zlib.MAX_WBITS | 16)
    if coding == "deflate":
        return _Deflate()
    raise ValueError("the answer has an unsupported content coding")


class _Deflate:
    """``deflate`` is meant to be zlib-wrapped (RFC 9110 §8.4.1.2); some servers
    send it raw. The first two bytes tell: a zlib header (compression method 8, a
    check that divides by 31) or not. (A raw stream cannot start like one: its
    first block would be a stored one with non-zero padding bits.)"""

    def __init__(self) -> None:
        self._d: Decoder | None = None
        self._head = b""

    def decompress(self, data: bytes) -> bytes:
        if self._d is None:
            self._head += data
            if len(self._head) < 2:
                return b""
            cmf, flg = self._head[0], self._head[1]
            wrapped = cmf & 0x0F == 8 and (cmf << 8 | flg) % 31 == 0
            self._d = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
            data, self._head = self._head, b""
        return self._d.decompress(data)

    def flush(self) -> bytes:
        if self._d is None:  # fewer than two bytes in all: no valid stream
            self._d = zlib.decompressobj(-zlib.MAX_WBITS)
            return self._d.decompress(self._head) + self._d.flush()
        return self._d.flush()
