"""A small HTTP server on a background thread, the base of the local stand-ins.

The fake OAuth server and the stand-in portal (tests, demo, benchmarks) both serve
from a ``ThreadingHTTPServer`` on 127.0.0.1 in a daemon thread; this holds that
lifecycle once: ``start``/``stop``, a context manager, and the base URL.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default listen backlog (5) refuses connections under a burst of
    # parallel requests, which would look like an upstream outage.
    request_queue_size = 128


class LocalServer:
    """Serves ``handler`` on ``host:port`` (0: a free port) once started."""

    def __init__(
        self,
        handler: type[BaseHTTPRequestHandler],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "local-server",
    ) -> None:
        self._server = _Server((host, port), handler)
        self._thread: threading.Thread | None = None
        self._name = name

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` of the listening socket."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Self:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=self._name,
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
