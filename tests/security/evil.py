"""A listener on 127.0.0.1 that records every connection and every byte it gets.

It stands for the host a hostile ``resource_url`` names: a test points the answer
at it and then asserts that nothing ever arrived (no connection, so no token).
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from typing import Any

from .background import Background


class _Recorder(socketserver.BaseRequestHandler):
    server: EvilListener

    def handle(self) -> None:
        self.request.settimeout(2.0)
        try:
            while data := self.request.recv(65536):
                self.server.record_bytes(data)
        except OSError:
            pass  # a timeout or reset ends this connection; it is counted already


class EvilListener(Background, socketserver.ThreadingTCPServer):
    """``with EvilListener() as evil: ...; assert evil.connections() == []``"""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Recorder)
        self._lock = threading.Lock()
        self._peers: list[Any] = []
        self.received = b""
        self._thread = threading.Thread(
            target=self.serve_forever, args=(0.05,), daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def verify_request(self, request: Any, client_address: Any) -> bool:
        # Called in the accept loop, in accept order: a connection made before
        # ``settle``'s own is always counted by the time ``settle`` returns.
        with self._lock:
            self._peers.append(client_address)
        return True

    def record_bytes(self, data: bytes) -> None:
        with self._lock:
            self.received += data

    def connections(self) -> list[Any]:
        """Every peer that connected so far (after :meth:`settle`, all of them)."""
        self.settle()
        with self._lock:
            return list(self._peers)

    def settle(self, timeout: float = 5.0) -> None:
        """Connect once and wait until that connection is accepted: connections
        queued before it have been accepted and counted by then."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            mine = s.getsockname()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                with self._lock:
                    if mine in self._peers:
                        self._peers.remove(mine)
                        return
                time.sleep(0.01)
        raise AssertionError("the recording listener stopped accepting")

    def _stop(self) -> None:
        self.shutdown()
        self.server_close()
