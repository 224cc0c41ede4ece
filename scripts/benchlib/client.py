"""The one client every measurement uses: an httpx streaming POST, timed.

The same code for every target, so the only difference between (a), (b) and (c)
is the path the bytes take. Times are ``perf_counter_ns``.
"""

from __future__ import annotations

import re
import ssl
import time
from dataclasses import dataclass, field

import httpx

STAMP = re.compile(rb"T(\d+)Z")


@dataclass(frozen=True)
class Target:
    """Where a request goes and how: URL, body, proxy and CA."""

    name: str
    url: str
    body: bytes
    proxy: str | None = None
    verify: ssl.SSLContext | bool = True
    headers: dict[str, str] = field(default_factory=dict)

    def client(self, *, timeout: float = 60.0) -> httpx.Client:
        """An HTTP/1.1 client (httpx's default): one connection per stream."""
        return httpx.Client(
            proxy=self.proxy, verify=self.verify, timeout=timeout, trust_env=False
        )


@dataclass
class Result:
    start: int
    first: int
    end: int
    size: int
    stamps: dict[int, int]
    """Send time at the stand-in -> arrival time at the client, per stamped event."""

    @property
    def ttfb(self) -> float:
        return (self.first - self.start) / 1e9

    @property
    def total(self) -> float:
        return (self.end - self.start) / 1e9

    def event_delays(self) -> list[float]:
        return [(got - sent) / 1e9 for sent, got in self.stamps.items()]


class BadAnswer(RuntimeError):
    pass


def stream_once(
    client: httpx.Client, target: Target, *, stamps: bool = False
) -> Result:
    """POST, read the streamed answer to its end; raise unless it is a 200."""
    start = now = time.perf_counter_ns()
    first = 0
    size = 0
    seen: dict[int, int] = {}
    pending = b""
    with client.stream(
        "POST", target.url, content=target.body, headers=target.headers
    ) as response:
        if response.status_code != 200:
            raise BadAnswer(
                f"{target.name}: {response.status_code} {response.read()!r}"
            )
        for chunk in response.iter_raw():
            now = time.perf_counter_ns()
            if not first:
                first = now
            size += len(chunk)
            if stamps:
                # Only whole lines: a stamp may be split across two reads. The
                # first sight counts (a Responses stream repeats the text at the end).
                pending += chunk
                whole, _, pending = pending.rpartition(b"\n")
                for m in STAMP.finditer(whole):
                    seen.setdefault(int(m[1]), now)
    if not first or size == 0:
        raise BadAnswer(f"{target.name}: empty answer")
    return Result(start, first, now, size, seen)
