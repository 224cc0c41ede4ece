"""Every measurement of issue 8 in one run, on 127.0.0.1, against the stand-in portal.

    scripts/bench [--quick | --smoke] [--out FILE] [--docs FILE | --no-docs]

Processes: the stand-in portal and the fake OAuth server run in threads of this
process; two ``mitmdump`` processes run beside it, started once and used in
alternation (each round runs every target once, in a shuffled order), so slow
moments of a shared machine hit all sides:

- (a) **direct**: httpx -> the stand-in (plain HTTP, chat completions);
- (b) **pass-through**: httpx -> ``mitmdump --mode reverse:<stand-in>`` with no
  addon -> the stand-in, over HTTPS with mitmproxy's CA (TLS to the proxy, like
  (c)), with ``stream_large_bodies=1`` so the answer streams (mitmproxy buffers
  whole bodies by default; the addon streams its answers). Reverse mode, not
  ``map_remote`` in regular mode: a streamed request goes out before the
  ``request`` hook that ``map_remote`` rewrites in.
- (c) **addon, Responses**: httpx -> ``mitmdump -s addon/qwen_addon.py`` ->
  relay -> the stand-in: ``POST https://portal.qwen.ai/v1/responses``, translated
  both ways, token swapped;
- (c') **addon, chat**: the same proxy, ``POST .../v1/chat/completions``: token swap
  and relay only, the same request and answer bytes as (a) and (b) (apples to
  apples).

The client is the same for all (:func:`.client.stream_once`, httpx, HTTP/1.1). The
addon runs with ``qwen_rotation_strategy=sequential`` and two accounts, so every
request is served by the first one (the failover measurement scripts a 429 on it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
from scripts.bench_translate import WORDS, workload
from scripts.benchlib.client import Result, Target, stream_once
from scripts.benchlib.procs import ROOT, Mitmdump, mitmdump, read_memory
from scripts.benchlib.standin import StampingPortal
from tests.proxy.harness import oauth_account, token_of, write_accounts

from qwen_oauth_mitm.oauth.fake_server import FakeQwenOAuth
from qwen_oauth_mitm.paths import StatePaths
from qwen_oauth_mitm.portal import Fault
from qwen_oauth_mitm.rotation.bench import bench_pick
from qwen_oauth_mitm.translate import translate_request

FIXTURE = ROOT / "tests" / "fixtures" / "opencode-1.18.33-main-request.json"
CHAT_BODY = json.dumps(
    {
        "model": "coder-model",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
).encode()
RESPONSES_BODY = json.dumps(
    {"model": "coder-model", "input": "hi", "stream": True, "store": False}
).encode()


@dataclass(frozen=True)
class Scale:
    translate_chunks: int
    translate_repeat: int
    request_calls: int
    sequential: int
    """Streamed requests per target, one at a time."""
    stamped_rounds: int
    stamped_events: int
    pace: float
    parallel_rounds: int
    memory_requests: int
    long_events: int
    long_pace: float
    picks: int
    failover_pairs: int


SCALES = {
    "full": Scale(20_000, 7, 200, 200, 4, 250, 0.004, 8, 1000, 150, 0.01, 200, 15),
    "quick": Scale(5_000, 3, 50, 40, 1, 150, 0.004, 2, 200, 100, 0.01, 100, 3),
    "smoke": Scale(1_000, 1, 5, 4, 1, 20, 0.002, 1, 10, 10, 0.005, 10, 1),
}
PARALLEL = 32


# --- the table ----------------------------------------------------------------------


@dataclass
class Row:
    section: str
    what: str
    baseline: str
    ours: str
    ratio: str = ""
    goal: str = ""
    met: bool | None = None

    def cells(self) -> list[str]:
        verdict = {True: "✅", False: "❌", None: ""}[self.met]
        return [
            self.section, self.what, self.baseline, self.ours, self.ratio,
            self.goal, verdict,
        ]  # fmt: skip


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print("  " + " | ".join(c for c in row.cells() if c), flush=True)

    def table(self) -> str:
        head = ["#", "measurement", "baseline", "ours", "ratio", "goal", "met"]
        lines = ["| " + " | ".join(head) + " |", "|---|---|---:|---:|---:|---|---|"]
        lines += ["| " + " | ".join(r.cells()) + " |" for r in self.rows]
        return "\n".join(lines)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} µs"


def signed_us(seconds: float) -> str:
    """A difference: ``+12.3 µs`` or ``-4.5 µs`` (a side can come out ahead)."""
    return f"{seconds * 1e6:+.1f} µs"


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def ratio_row(
    section: str, what: str, base: tuple[str, float], ours: tuple[str, float],
    limit: float | None, fmt: Callable[[float], str] = ms,
) -> Row:  # fmt: skip
    r = ours[1] / base[1]
    return Row(
        section,
        what,
        f"{base[0]} {fmt(base[1])}",
        f"{ours[0]} {fmt(ours[1])}",
        f"{r:.2f}",
        f"≤ {limit:.2f}" if limit is not None else "",
        (r <= limit) if limit is not None else None,
    )


# --- 1. translator --------------------------------------------------------------------


def opencode_request() -> dict[str, Any]:
    """An OpenCode-shaped Responses request: 100 input items, 30 tools."""
    body: dict[str, Any] = json.loads(FIXTURE.read_text())["body"]
    tools = [
        {**tool, "name": f"{tool['name']}_{copy}"}
        for copy in range(3)
        for tool in body["tools"]
    ][:30]
    items: list[dict[str, Any]] = [body["input"][0]]  # the long system prompt
    turn = 0
    while len(items) < 100:
        call = f"call_{turn:03d}"
        text = " ".join(WORDS[(turn + i) % len(WORDS)] for i in range(40))
        items += [
            {"role": "user", "content": [{"type": "input_text", "text": text}]},
            {
                "role": "assistant",
                "content": [{"type": "output_text", "text": text}],
            },
            {
                "type": "function_call",
                "call_id": call,
                "name": tools[turn % 30]["name"],
                "arguments": json.dumps({"filePath": f"/src/file_{turn}.py"}),
            },
            {
                "type": "function_call_output",
                "call_id": call,
                "output": text * 5,
            },
        ]
        turn += 1
    return {**body, "input": items[:100], "tools": tools}


def alternate(
    repeat: int, a: Callable[[], object], b: Callable[[], object]
) -> tuple[float, float]:
    """Median seconds of ``a`` and of ``b``, run alternately ``repeat`` times."""
    ta: list[float] = []
    tb: list[float] = []
    for i in range(repeat):
        for fn, out in ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(ta), statistics.median(tb)


def bench_translator(scale: Scale, report: Report) -> None:
    work = workload(scale.translate_chunks)
    t_floor, t_ours = alternate(scale.translate_repeat, work.floor, work.translate)
    mb = work.megabytes
    r = t_floor / t_ours
    report.add(
        Row(
            "1",
            f"stream translator, MB/s of upstream SSE ({mb:.1f} MB, "
            f"{work.chunks} chunks)",
            f"json.loads+dumps {mb / t_floor:.1f}",
            f"{mb / t_ours:.1f}",
            f"{r:.2f}",
            "≥ 0.50",
            r >= 0.5,
        )
    )
    body = opencode_request()
    raw = json.dumps(body).encode()

    def req_floor() -> None:
        json.dumps(json.loads(raw))

    def req_ours() -> None:
        json.dumps(translate_request(json.loads(raw)).chat)

    f, o = alternate(scale.request_calls, req_floor, req_ours)
    report.add(
        Row(
            "1",
            f"request translation per call (100 items, 30 tools, {len(raw) // 1024} "
            "KiB; loads+translate+dumps)",
            f"json.loads+dumps {ms(f)}",
            ms(o),
            f"{f / o:.2f}",
        )
    )


# --- the live set-up ------------------------------------------------------------------


@dataclass
class Live:
    portal: StampingPortal
    plain: Mitmdump
    addon: Mitmdump
    targets: dict[str, Target]
    home_token: str
    work_token: str


@contextmanager
def live(workdir: Path) -> Iterator[Live]:
    with ExitStack() as stack:
        oauth = stack.enter_context(FakeQwenOAuth(interval=0.01, pending_polls=1))
        portal = stack.enter_context(StampingPortal(oauth, keys={"bench-key"}))
        portal.text = " ".join(WORDS[i % len(WORDS)] for i in range(60))
        home, work = oauth_account(oauth, "home"), oauth_account(oauth, "work")
        write_accounts(
            StatePaths(workdir / "addon" / "config" / "opencode"), [home, work]
        )
        port = portal.url.rsplit(":", 1)[1].split("/")[0]
        plain_cm = mitmdump(
            workdir,
            "plain",
            [
                "--mode",
                f"reverse:http://127.0.0.1:{port}",
                # Stream every body (mitmproxy buffers whole answers by default);
                # the addon streams its relayed answers the same way.
                "--set",
                "stream_large_bodies=1",
            ],
            addon=False,
        )
        addon_cm = mitmdump(
            workdir,
            "addon",
            [
                "--set", "qwen_rotation_strategy=sequential",
                "--set", "qwen_proactive_refresh=false",
            ],
            addon=True,
            env={
                "XDG_CONFIG_HOME": str(workdir / "addon" / "config"),
                "QWEN_OAUTH_BASE_URL": oauth.url,
                "QWEN_API_BASE_URL": portal.url,
            },
        )  # fmt: skip
        plain = stack.enter_context(plain_cm)
        addon = stack.enter_context(addon_cm)
        key = {"Authorization": "Bearer bench-key", "Content-Type": "application/json"}
        dummy = {"Authorization": "Bearer dummy", "Content-Type": "application/json"}
        targets = {
            "a": Target("a", f"{portal.url}/chat/completions", CHAT_BODY, headers=key),
            "b": Target(
                "b",
                f"https://127.0.0.1:{plain.port}/v1/chat/completions",
                CHAT_BODY,
                None,
                plain.ssl_context(),
                key,
            ),
            "c": Target(
                "c",
                "https://portal.qwen.ai/v1/responses",
                RESPONSES_BODY,
                addon.proxy_url,
                addon.ssl_context(),
                dummy,
            ),
            "c'": Target(
                "c'",
                "https://portal.qwen.ai/v1/chat/completions",
                CHAT_BODY,
                addon.proxy_url,
                addon.ssl_context(),
                dummy,
            ),
        }
        yield Live(portal, plain, addon, targets, token_of(home), token_of(work))


def round_order(items: Sequence[str], i: int) -> list[str]:
    """Round ``i``'s order: shuffled, seeded by the round (reproducible).

    Not a rotation of one fixed order: there c' always ran right after c, on the
    mitmdump that had just served, while b and c always followed the other
    process. A process woken from idle answers measurably slower than one still
    warm, so that order flattered c'.
    """
    return random.Random(i).sample(list(items), len(items))


# --- 2. one request at a time ---------------------------------------------------------


def bench_sequential(live: Live, scale: Scale, report: Report) -> None:
    names = ["a", "b", "c", "c'"]
    clients = {n: live.targets[n].client() for n in names}
    results: dict[str, list[Result]] = {n: [] for n in names}
    try:
        for _ in range(3):  # warm: connections, TLS, certificates, imports
            for n in names:
                stream_once(clients[n], live.targets[n])
        for i in range(scale.sequential):
            for n in round_order(names, i):
                results[n].append(stream_once(clients[n], live.targets[n]))
    finally:
        for c in clients.values():
            c.close()
    med = {
        n: (
            statistics.median(r.ttfb for r in rs),
            statistics.median(r.total for r in rs),
        )
        for n, rs in results.items()
    }
    for k, label in ((0, "TTFB"), (1, "total")):
        report.add(
            ratio_row(
                "2", f"{label}, one stream at a time, c'/b (chat, token swap only)",
                ("b", med["b"][k]), ("c'", med["c'"][k]), 1.10,
            )
        )  # fmt: skip
        report.add(
            ratio_row(
                "2", f"{label}, one stream at a time, c/b (Responses→chat→Responses)",
                ("b", med["b"][k]), ("c", med["c"][k]), 1.10,
            )
        )  # fmt: skip
        report.add(
            ratio_row(
                "2", f"{label}, c/a: the proxy at all (TLS to the proxy included)",
                ("a", med["a"][k]), ("c", med["c"][k]), None,
            )
        )  # fmt: skip
    report.add(
        ratio_row(
            "2", "total, b/a: mitmproxy alone", ("a", med["a"][1]),
            ("b", med["b"][1]), None,
        )
    )  # fmt: skip
    size = {k: results[k][0].size for k in names}
    report.notes.append(
        f"2: medians of {scale.sequential} streamed requests per target, "
        "a, b, c and c' once a round, in a new shuffled order each round (a fixed "
        "order gave c' a warm start: it always ran right after c on the same "
        "mitmdump); one persistent client per target (the relay keeps "
        "its connections alive, so the client's TLS connection to mitmproxy is "
        "reused). The answer is 60 text chunks (~"
        f"{size['a'] // 1024} KiB as chat SSE; (c) receives the Responses events, "
        f"~{size['c'] // 1024} KiB). Through the proxy, the client speaks HTTPS to "
        "mitmproxy (CONNECT, TLS with its CA), as OpenCode does; (a) is plain HTTP."
    )


# --- 3. per-event latency -------------------------------------------------------------


def bench_events(live: Live, scale: Scale, report: Report) -> None:
    names = ["a", "b", "c", "c'"]
    clients = {n: live.targets[n].client() for n in names}
    delays: dict[str, list[float]] = {n: [] for n in names}
    live.portal.stamped = (scale.stamped_events, scale.pace)
    try:
        for i in range(scale.stamped_rounds):
            for n in round_order(names, i):
                r = stream_once(clients[n], live.targets[n], stamps=True)
                if len(r.stamps) != scale.stamped_events:
                    raise RuntimeError(f"{n}: {len(r.stamps)} stamped events")
                delays[n] += r.event_delays()
    finally:
        live.portal.stamped = None
        for c in clients.values():
            c.close()
    p = {n: (pct(d, 50), pct(d, 99)) for n, d in delays.items()}
    for n in ("b", "c", "c'"):
        report.add(
            Row(
                "3",
                f"per-event delay stand-in→client p50 / p99, {n} vs a",
                f"a {us(p['a'][0])} / {us(p['a'][1])}",
                f"{n} {us(p[n][0])} / {us(p[n][1])}",
            )
        )
    for n in ("c", "c'"):
        added50, added99 = p[n][0] - p["b"][0], p[n][1] - p["b"][1]
        report.add(
            Row(
                "3",
                f"added by the addon per event p50 / p99 ({n} - b)",
                f"b {us(p['b'][0])} / {us(p['b'][1])}",
                f"{signed_us(added50)} / {signed_us(added99)}",
                "",
                "p99 < 1 ms",
                added99 < 1e-3,
            )
        )
    report.notes.append(
        f"3: {scale.stamped_rounds} x {scale.stamped_events} events per target, one "
        f"every {scale.pace * 1e3:g} ms; each chunk carries perf_counter_ns taken at "
        "the stand-in just before it is written, found again in the bytes the client "
        "reads (same process, same clock). Added = percentile(c) - percentile(b)."
    )


# --- 4. concurrency -------------------------------------------------------------------


def parallel_round(
    pool: ThreadPoolExecutor, clients: Sequence[httpx.Client], target: Target
) -> list[Result]:
    barrier = threading.Barrier(len(clients))

    def one(client: httpx.Client) -> Result:
        barrier.wait()
        return stream_once(client, target)

    return list(pool.map(one, clients))


def bench_parallel(live: Live, scale: Scale, report: Report) -> None:
    names = ["b", "c", "c'"]
    clients = {n: [live.targets[n].client() for _ in range(PARALLEL)] for n in names}
    totals: dict[str, list[float]] = {n: [] for n in names}
    ttfbs: dict[str, list[float]] = {n: [] for n in names}
    try:
        with ThreadPoolExecutor(PARALLEL) as pool:
            for n in names:  # warm every connection once
                parallel_round(pool, clients[n], live.targets[n])
            for i in range(scale.parallel_rounds):
                for n in round_order(names, i):
                    rs = parallel_round(pool, clients[n], live.targets[n])
                    start = min(r.start for r in rs)
                    totals[n].append((max(r.end for r in rs) - start) / 1e9)
                    ttfbs[n] += [r.ttfb for r in rs]
    finally:
        for cs in clients.values():
            for c in cs:
                c.close()
    for n in ("c", "c'"):
        report.add(
            ratio_row(
                "4", f"{PARALLEL} parallel streams: total time, {n}/b",
                ("b", statistics.median(totals["b"])),
                (n, statistics.median(totals[n])), None,
            )
        )  # fmt: skip
        report.add(
            ratio_row(
                "4", f"{PARALLEL} parallel streams: p99 TTFB, {n}/b",
                ("b", pct(ttfbs["b"], 99)), (n, pct(ttfbs[n], 99)), None,
            )
        )  # fmt: skip
    report.notes.append(
        f"4: median over {scale.parallel_rounds} rounds of {PARALLEL} streams started "
        "together (a barrier), one HTTP/1.1 connection each (httpx's default), so "
        "mitmproxy's limit of 5 upstream connections per HTTP/2 client connection "
        "(design note §6: every h2 stream relayed to the HTTP/1.1 relay needs its "
        "own) does not apply. An HTTP/2 client (OpenCode over undici can be one) "
        "should run mitmdump with `--set http2=false`, as the README says."
    )


# --- 5. rotation ----------------------------------------------------------------------


def bench_rotation(scale: Scale, report: Report) -> None:
    for n in (10, 100, 1000):
        t = bench_pick(n, picks=scale.picks)
        report.add(
            Row(
                "5",
                f"one rotation pick (hybrid, full scan) among {n:,} accounts",
                "",
                us(t),
                "",
                "< 1 ms" if n == 1000 else "",
                t < 1e-3 if n == 1000 else None,
            )
        )


# --- 6. memory ------------------------------------------------------------------------


def sample_rss(pid: int, samples: list[int], done: threading.Event) -> None:
    while not done.is_set():
        samples.append(read_memory(pid)["VmRSS"])
        time.sleep(0.02)


def bench_memory(live: Live, scale: Scale, report: Report) -> None:
    procs = {"b": live.plain, "c": live.addon}
    clients = {n: live.targets[n].client() for n in procs}
    half = scale.memory_requests // 2
    rss: dict[str, list[int]] = {n: [p.memory()["VmRSS"]] for n, p in procs.items()}
    try:
        for i in range(scale.memory_requests):
            for n in round_order(list(procs), i):
                stream_once(clients[n], live.targets[n])
            if i + 1 in (half, scale.memory_requests):
                for n, p in procs.items():
                    rss[n].append(p.memory()["VmRSS"])
    finally:
        for c in clients.values():
            c.close()
    hwm = {n: p.memory()["VmHWM"] for n, p in procs.items()}
    report.add(
        Row(
            "6",
            f"peak RSS (VmHWM) after {scale.memory_requests:,} more streamed requests",
            f"b {mib(hwm['b'])}",
            f"c {mib(hwm['c'])}",
            f"{hwm['c'] / hwm['b']:.2f}",
        )
    )
    for n in ("b", "c"):
        start, mid, end = rss[n]
        growth = end - mid
        report.add(
            Row(
                "6",
                f"{n}: RSS after the first {half} / after the last {half} requests "
                f"(started at {mib(start)})",
                mib(mid),
                mib(end),
                f"{growth:+d} KiB",
                "no growth (≤ 1 MiB)" if n == "c" else "",
                growth <= 1024 if n == "c" else None,
            )
        )
    # 32 parallel long streams, one proxy at a time, RSS sampled every 20 ms.
    live.portal.chunk_delay = scale.long_pace
    text = live.portal.text
    live.portal.text = " ".join(WORDS[i % len(WORDS)] for i in range(scale.long_events))
    peak: dict[str, int] = {}
    try:
        with ThreadPoolExecutor(PARALLEL) as pool:
            for n, p in procs.items():
                cs = [live.targets[n].client() for _ in range(PARALLEL)]
                done = threading.Event()
                samples: list[int] = []
                sampler = threading.Thread(
                    target=sample_rss, args=(p.process.pid, samples, done)
                )
                sampler.start()
                try:
                    parallel_round(pool, cs, live.targets[n])
                finally:
                    done.set()
                    sampler.join()
                    for c in cs:
                        c.close()
                peak[n] = max(samples)
    finally:
        live.portal.chunk_delay = 0.0
        live.portal.text = text
    secs = scale.long_events * scale.long_pace
    report.add(
        Row(
            "6",
            f"peak RSS during {PARALLEL} parallel long streams "
            f"({scale.long_events} chunks over {secs:.1f} s)",
            f"b {mib(peak['b'])}",
            f"c {mib(peak['c'])}",
            f"{peak['c'] / peak['b']:.2f}",
        )
    )


# --- 7. failover ----------------------------------------------------------------------


def bench_failover(live: Live, scale: Scale, report: Report) -> None:
    target = live.targets["c"]
    normal: list[float] = []
    failover: list[float] = []
    # Sequential rotation stays on the account that served last: the 429 goes to
    # that one (``tokens[0]``), the other serves, and the two swap roles.
    tokens = [live.home_token, live.work_token]

    def failing_over(client: httpx.Client) -> float:
        first, second = tokens
        live.portal.script(first, Fault("429", retry_after=1))
        before = (len(live.portal.statuses(first)), len(live.portal.statuses(second)))
        took = stream_once(client, target).total
        after = (len(live.portal.statuses(first)), len(live.portal.statuses(second)))
        if live.portal.statuses(first)[-1] != 429 or after != (
            before[0] + 1,
            before[1] + 1,
        ):
            raise RuntimeError(f"no failover: {before} -> {after}")
        tokens.reverse()
        return took

    with target.client() as client:
        for i in range(scale.failover_pairs):
            time.sleep(1.1)  # the other account's cooldown (Retry-After: 1) ends
            stream_once(client, target)  # not timed: the first after a pause
            if i % 2 == 0:
                normal.append(stream_once(client, target).total)
                failover.append(failing_over(client))
            else:
                failover.append(failing_over(client))
                normal.append(stream_once(client, target).total)
    n, f = statistics.median(normal), statistics.median(failover)
    report.add(
        Row(
            "7",
            "failover: a stream whose first account answers 429, total time",
            f"no 429 {ms(n)}",
            f"429 then next {ms(f)}",
            f"{'+' if f >= n else ''}{ms(f - n)}",
        )
    )
    report.notes.append(
        f"7: {scale.failover_pairs} pairs in alternating order, each after a 1.1 s "
        "pause and an untimed request; sequential rotation over two accounts (it "
        "stays on the account that served last, so the 429, Retry-After: 1, goes "
        "to that one); every failover is checked at the stand-in (a 429, then a 200 "
        "from the other account)."
    )


# --- main -----------------------------------------------------------------------------


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return (
        f"{len(os.sched_getaffinity(0))} CPUs (nproc), {model}; "
        f"{platform.system()} {platform.release()}; Python "
        f"{platform.python_version()}, mitmproxy {version('mitmproxy')}, "
        f"httpx {version('httpx')} (the client), "
        f"httptools {version('httptools')} (the relay's)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench", description=__doc__.splitlines()[0]
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer samples, < 1 min")
    mode.add_argument("--smoke", action="store_true", help="a few samples (tests)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results/latest.md")
    parser.add_argument(
        "--docs",
        type=Path,
        default=None,
        help="also write here (default: docs/benchmarks.md on a full run only)",
    )
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args(argv)
    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    scale = SCALES[name]
    docs: Path | None = args.docs
    if docs is None and name == "full":
        docs = ROOT / "docs" / "benchmarks.md"
    if args.no_docs:
        docs = None

    began = time.monotonic()
    report = Report()
    print(f"== scripts/bench ({name})", flush=True)
    bench_translator(scale, report)
    bench_rotation(scale, report)
    with (
        tempfile.TemporaryDirectory(prefix="qwen-bench-") as tmp,
        live(Path(tmp)) as lv,
    ):
        bench_sequential(lv, scale, report)
        bench_events(lv, scale, report)
        bench_parallel(lv, scale, report)
        bench_memory(lv, scale, report)
        bench_failover(lv, scale, report)
    elapsed = time.monotonic() - began

    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join(
        [
            "# Benchmarks",
            "",
            f"`scripts/bench{'' if name == 'full' else ' --' + name}` on {stamp}, "
            f"{elapsed:.0f} s. Machine: {machine()}.",
            "",
            "Everything on 127.0.0.1 against the stand-in portal. Targets: "
            "**a** direct to the stand-in (chat completions); **b** `mitmdump` "
            "without the addon (pass-through); **c** `mitmdump -s "
            "addon/qwen_addon.py`, a Responses request (translated both ways, "
            "token swapped, through the relay); **c'** the same proxy, a chat "
            "completions request (token swap and relay only: the same bytes as a "
            "and b). Medians unless said; the sides of every ratio ran alternately "
            "in the same run.",
            "",
            report.table(),
            "",
            *(f"- {note}" for note in report.notes),
            "",
        ]
    )
    print()
    print(text)
    for path in (args.out, docs):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
