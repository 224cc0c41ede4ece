"""The request body size limit, applied before mitmproxy buffers a body.

mitmproxy reads a request body whole before the ``request`` hook, with no bound
unless its global ``body_size_limit`` is set (which would also cut flows to other
hosts, and answers with an HTML page). So the ``requestheaders`` hook decides,
from the headers alone, for ``POST``s to the Qwen API:

- a ``Content-Length`` within ``max_request_body_mb``: buffered by mitmproxy as
  usual (the common case: OpenCode always sends one);
- larger, or no length known (chunked, or HTTP/2 without ``content-length``): the
  body is streamed through a :class:`BodyCollector`, which keeps it only while it
  stays within the limit and passes nothing on. The flow already points at the
  relay; the ``request`` hook (run at the body's end, before the relay sees that
  end) turns the collected bytes into a job, or into a refusal (413, or the usual
  400) that the relay answers.
"""

from __future__ import annotations

from mitmproxy import http

MIB = 1024 * 1024


def declared_length(request: http.Request) -> int | None:
    """The body size the headers promise; ``None`` when unknown until its end."""
    value = request.headers.get("content-length")
    if value is not None:
        try:
            length = int(value.strip())
        except ValueError:
            return None  # HTTP/1 refuses this before any hook; treat as unknown
        return length if length >= 0 else None
    if request.is_http2 or request.is_http3:
        return None  # DATA frames until END_STREAM
    if "transfer-encoding" in request.headers:
        return None  # chunked
    return 0  # HTTP/1.1 with neither header: no body


class BodyCollector:
    """mitmproxy's stream callable for one request body: keeps it up to ``limit``.

    Returns no bytes to send on (the relay ignores request bodies: the job carries
    the parsed one). Past the limit the bytes are dropped as they come, so a
    refused body costs no memory however large it is.
    """

    def __init__(self, limit: int, *, declared: int | None = None) -> None:
        self.limit = limit
        self.size = 0 if declared is None else declared
        self._buf = bytearray()

    @property
    def too_large(self) -> bool:
        return self.size > self.limit

    def __call__(self, chunk: bytes) -> list[bytes]:
        if self.size > self.limit:
            return []
        self.size += len(chunk)
        if self.size > self.limit:
            self._buf = bytearray()  # free what was kept so far
        else:
            self._buf += chunk
        return []

    def body(self) -> bytearray:
        """The body collected (empty once it grew past the limit)."""
        return self._buf
