"""What the forwarder sees of an upstream HTTP client: :class:`Upstream` and the
:class:`UpstreamAnswer` it returns (tests script their own), and the errors.

The errors (messages never quote a header value or a body: they may hold tokens)::

    UpstreamError                base
     +-- UpstreamConnectError    the request did not get out
     +-- UpstreamProtocolError   a malformed, cut or missing answer
     +-- UpstreamTimeout         no response head within ``first_byte_timeout``

:mod:`.upstream` says which failure raises which.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Protocol

import httpx


class UpstreamError(Exception):
    """The upstream exchange failed; the message names no header value."""


class UpstreamConnectError(UpstreamError):
    """The request did not get out: no connection, or it could not be written."""


class UpstreamProtocolError(UpstreamError):
    """The answer was malformed, cut, or never came."""


class UpstreamTimeout(UpstreamError):
    """The upstream sent no response head within ``first_byte_timeout``."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no answer within {seconds:g} s")
        self.seconds = seconds


class UpstreamAnswer(Protocol):
    """A response whose status and headers are in; its body is still to read."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> httpx.Headers: ...

    def aiter_raw(self, *, gap: float | None = None) -> AsyncGenerator[bytes]:
        """The body without its transfer framing (chunked), still content-coded;
        ``TimeoutError`` if a chunk comes ``gap`` seconds after it was asked for."""
        ...

    def aiter_bytes(self, *, gap: float | None = None) -> AsyncGenerator[bytes]:
        """:meth:`aiter_raw`, content-decoded (gzip, deflate, identity)."""
        ...

    async def aread(self, *, gap: float | None = None) -> bytes:
        """The whole decoded body."""
        ...

    async def aclose(self) -> None:
        """Done with the answer (idempotent); a body not read to its end is
        dropped with its connection."""
        ...


class Upstream(Protocol):
    """What the forwarder needs of an HTTP client (tests script their own)."""

    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        connect_timeout: float,
        write_timeout: float,
        first_byte_timeout: float,
    ) -> UpstreamAnswer:
        """Send the request; return once the status and headers are in."""
        ...

    async def aclose(self) -> None:
        """Close every idle connection."""
        ...
