"""The pure parts of the upstream client (:mod:`.upstream`): no I/O.

- :func:`parse_url`: a URL's pool key, request target and ``Host`` header;
- :func:`build_request`: the h11 request, with the headers the client owns
  (``Host``, ``Content-Length``) set by it and nobody else;
- :func:`quote_free`: an h11 error message without what it quotes (h11 quotes
  the offending line, which may carry a token);
- :func:`content_codings` and :func:`decoder`: ``Content-Encoding`` (gzip,
  deflate, identity; RFC 9110 §8.4).

They raise ``ValueError`` (messages that quote no header value); the client turns
it into its own errors.
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Iterable, Mapping
from typing import Protocol
from urllib.parse import urlsplit

import h11

DEFAULT_PORTS = {"http": 80, "https": 443}

type PoolKey = tuple[str, str, int]
"""Where a connection goes: scheme, host, port."""

_OURS = frozenset({"host", "content-length", "transfer-encoding"})
"""Headers the client sets itself: a caller's are dropped."""


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
) -> h11.Request:
    """``headers`` with ``Host`` first and a ``Content-Length`` for a body (or any
    POST, PUT, PATCH); a caller's ``Host``, ``Content-Length`` and
    ``Transfer-Encoding`` are dropped. ``ValueError`` for a header h11 will not
    send (a line break in a value), naming no value."""
    fields = [("Host", host)]
    fields += [(k, v) for k, v in headers.items() if k.lower() not in _OURS]
    if body or method in ("POST", "PUT", "PATCH"):
        fields.append(("Content-Length", str(len(body))))
    try:
        return h11.Request(method=method, target=target, headers=fields)
    except h11.LocalProtocolError as e:
        raise ValueError(f"cannot send this request: {quote_free(e)}") from None
    except UnicodeEncodeError:
        raise ValueError("cannot send this request: a header is not ASCII") from None


def quote_free(error: Exception) -> str:
    """``error``'s message cut before its first quote: h11 quotes the offending
    line (``illegal header line: b'Authorization: Bearer ...'``)."""
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
