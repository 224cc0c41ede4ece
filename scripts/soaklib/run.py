"""The soak: many requests through the whole stack, random faults, then checks.

    scripts/soak [--quick] [--requests N] [--concurrency C] [--seed S] [--kills K]
                 [--out FILE] [--docs FILE | --no-docs]

Processes: the stand-in portal (OAuth and chat on one port, :mod:`.standin`) runs
in threads of this process, ``mitmdump -s addon/qwen_addon.py`` beside it; the
client (:mod:`.client`, httpx, HTTP/1.1 through the proxy, trusting its CA) sends
``C`` requests at a time: Responses or Chat Completions, streamed or whole, at
random. The stand-in injects random faults (429, 401, 500, streams cut after a few
chunks, slow streams). Accounts: several OAuth logins whose tokens live
``--lifetime`` seconds (so the proxy refreshes them, rotating the refresh tokens,
as it serves) and one API key.

Then, with the load stopped and ``mitmdump`` stopped (SIGTERM: its final save):

- every failure the client saw has an allowed cause (:mod:`.checks`);
- RSS of ``mitmdump`` after warm-up and at the end: no growth beyond a margin;
- the accounts file parses, holds the same accounts, none needs a re-login, each
  OAuth account holds the refresh token the stand-in issued last; it and the
  tracker file are 0600, no temporary file is left;
- each refresh was due or followed a 401 for that token (no storm), and no expired
  token reached the portal (none late);
- no token the stand-in issued appears in ``mitmdump``'s output;
- ``--kills K``: then ``K`` times, ``mitmdump`` is SIGKILLed at a random moment
  under load, refreshes and CLI writes (:mod:`tests.proxy.crash`), and the state
  files are checked after each kill.

Exit status 1 when an invariant fails. The report (markdown) is printed and written
to ``soak-results/latest.md``; a full run (not ``--quick``, default request count)
also writes ``docs/soak.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import stat
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import httpx
from pydantic import SecretStr
from scripts.benchlib.procs import ROOT, Mitmdump, mitmdump, read_memory, stop
from scripts.soaklib.checks import ALLOWED, SERVED, check_refreshes, classify
from scripts.soaklib.client import Kind, Outcome, run_one
from scripts.soaklib.standin import FaultMix, Record, SoakStandIn
from tests.proxy.crash import CrashReport, crash_cycles
from tests.proxy.harness import account_from_tokens

from qwen_oauth_mitm.accounts import Account, AccountsFile
from qwen_oauth_mitm.paths import StatePaths
from qwen_oauth_mitm.rotation import tracker_file
from qwen_oauth_mitm.store import accounts_file

DEFAULT_REQUESTS = 10_000
QUICK_REQUESTS = 500
API_KEY = "soak-api-key-0123456789"
RSS_MARGIN_KIB = 8 * 1024
"""Allowed RSS growth from after warm-up to the end: the allocator's and
OpenSSL's heaps settle slowly (Python's own allocations, traced with
tracemalloc, stay flat: +0.1 MiB over 2,400 requests); a leak of 1 KiB a
request over the 9,000 requests after warm-up exceeds it."""


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def fail(self, what: str) -> None:
        self.violations.append(what)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=None)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help=f"{QUICK_REQUESTS} requests")
    p.add_argument(
        "--accounts", type=int, default=4, help="OAuth accounts (plus a key)"
    )
    p.add_argument("--lifetime", type=float, default=30.0, help="token lifetime, s")
    p.add_argument("--window", type=float, default=10.0, help="refresh window, s")
    p.add_argument("--kills", type=int, default=None, help="SIGKILL cycles after")
    p.add_argument("--out", type=Path, default=ROOT / "soak-results" / "latest.md")
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "soak.md")
    p.add_argument("--no-docs", action="store_true")
    args = p.parse_args(argv)
    if args.requests is None:
        args.requests = QUICK_REQUESTS if args.quick else DEFAULT_REQUESTS
    if args.kills is None:
        args.kills = 5 if args.quick else 40
    return args


def seed_accounts(
    standin: SoakStandIn, paths: StatePaths, n: int, lifetime: float
) -> list[Account]:
    now = time.time()
    accounts = []
    for i in range(1, n + 1):
        identity = f"soak{i}@qwen-stand-in.invalid"
        accounts.append(
            account_from_tokens(
                standin.seed_account(identity),
                f"oauth{i}",
                account_id=f"acct_soak{i}",
                expires_in=lifetime,
                identity=identity,
            )
        )
    accounts.append(
        Account(
            id="acct_key",
            label="key",
            kind="key",
            access_token=SecretStr(API_KEY),
            base_url=standin.url,
            added_at=now,
            updated_at=now,
        )
    )
    accounts_file(paths.accounts).write(AccountsFile(accounts=tuple(accounts)))
    return accounts


async def load(
    proxy: Mitmdump,
    args: argparse.Namespace,
    text: str,
    warmup: int,
    rss: dict[str, int],
    curve: list[int],
) -> list[Outcome]:
    rng = random.Random(args.seed)
    plan: list[tuple[Kind, bool]] = [
        ("responses" if rng.random() < 0.5 else "chat", rng.random() < 0.5)
        for _ in range(args.requests)
    ]
    outcomes: list[Outcome] = []
    next_n = 0
    started = time.monotonic()
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    async with httpx.AsyncClient(
        proxy=proxy.proxy_url,
        verify=proxy.ssl_context(),
        timeout=httpx.Timeout(120.0),
        limits=limits,
        trust_env=False,
    ) as client:

        async def worker() -> None:
            nonlocal next_n
            while next_n < len(plan):
                n = next_n
                next_n += 1
                kind, stream = plan[n]
                t0 = time.monotonic()
                outcome = await run_one(client, n, kind, stream, text)
                outcome = Outcome(
                    **{**outcome.__dict__, "seconds": time.monotonic() - t0}
                )
                outcomes.append(outcome)
                done = len(outcomes)
                if done == warmup:
                    rss["warm"] = read_memory(proxy.process.pid)["VmRSS"]
                if done % 1000 == 0:
                    curve.append(read_memory(proxy.process.pid)["VmRSS"])
                    rate = done / (time.monotonic() - started)
                    print(f"   {done} requests ({rate:.0f}/s)", flush=True)

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return outcomes


def check_files(
    paths: StatePaths, report: Report, expected: list[Account], standin: SoakStandIn
) -> str:
    try:
        stored = accounts_file(paths.accounts).read()
    except Exception as e:
        report.fail(f"the accounts file does not parse: {type(e).__name__}")
        return "does not parse ❌"
    ids = sorted(a.id for a in stored.accounts)
    if ids != sorted(a.id for a in expected):
        report.fail(f"accounts changed: {ids}")
    for account in stored.accounts:
        if account.needs_relogin:
            report.fail(
                f"account {account.label} needs a re-login: {account.relogin_reason}"
            )
        if account.kind == "oauth" and account.identity is not None:
            latest = standin.latest_refresh_token(account.identity)
            held = (
                account.refresh_token.get_secret_value()
                if account.refresh_token
                else None
            )
            if held != latest:
                report.fail(f"account {account.label} lost its latest refresh token")
    try:
        tracker_file(paths.tracker_state).read()
    except Exception as e:
        report.fail(f"the tracker file does not parse: {type(e).__name__}")
    for path in (paths.accounts, paths.tracker_state):
        if not path.exists():
            report.fail(f"{path.name} is missing")
        elif stat.S_IMODE(path.stat().st_mode) != 0o600:
            report.fail(f"{path.name} is not 0600")
    left = [p.name for p in paths.accounts.parent.glob(".*.tmp")]
    if left:
        report.fail(f"temporary files left: {left}")
    return (
        f"{len(ids)} accounts, same ids, none needs a re-login, latest refresh "
        "tokens held, files 0600"
    )


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def soak(args: argparse.Namespace, workdir: Path, report: Report) -> None:
    mix = FaultMix()
    paths = StatePaths(workdir / "config" / "opencode")
    with SoakStandIn(
        seed=args.seed, mix=mix, token_lifetime=args.lifetime, keys=(API_KEY,)
    ) as standin:
        accounts = seed_accounts(standin, paths, args.accounts, args.lifetime)
        env = {
            "XDG_CONFIG_HOME": str(workdir / "config"),
            "QWEN_OAUTH_BASE_URL": standin.base_url,
            "QWEN_API_BASE_URL": standin.url,
        }
        options = [
            "--set", "termlog_verbosity=info",
            "--set", f"qwen_refresh_window_seconds={args.window:g}",
            "--set", "qwen_token_bucket_max_tokens=1000",
            "--set", "qwen_token_bucket_regeneration_rate_per_minute=100000",
        ]  # fmt: skip
        rss: dict[str, int] = {}
        warmup = max(1, min(1000, args.requests // 10))
        with mitmdump(workdir, "soak", options, addon=True, env=env) as proxy:
            rss["start"] = read_memory(proxy.process.pid)["VmRSS"]
            started = time.monotonic()
            curve: list[int] = []
            outcomes = asyncio.run(load(proxy, args, standin.text, warmup, rss, curve))
            elapsed = time.monotonic() - started
            rss["end"] = read_memory(proxy.process.pid)["VmRSS"]
            rss["peak"] = read_memory(proxy.process.pid)["VmHWM"]
            standin.faults_on = False
            stop(proxy.process)
            log = proxy.output()
        record = standin.record
        summarize(args, report, outcomes, record, elapsed, rss, warmup, curve)
        refreshes = check_refreshes(record, lifetime=args.lifetime, window=args.window)
        for v in refreshes.violations or []:
            report.fail(v)
        files = check_files(paths, report, accounts, standin)
        leaked = [t for t in record.issued if t in log] + [
            t for t in standin.auth.issued if t in log
        ]
        if API_KEY in log:
            leaked.append("the API key")
        if leaked:
            report.fail(f"{len(leaked)} tokens appear in mitmdump's output")
        per = ", ".join(
            f"{a.split('@')[0]} {n}" for a, n in sorted(refreshes.per_account.items())
        )
        refused_oauth = sum(1 for a, _, _ in record.refused if a != API_KEY)
        total = sum(refreshes.per_account.values())
        report.add(
            "",
            "| tokens and state | |",
            "|---|---|",
            row("refreshes at the OAuth server", f"{total} ({per})"),
            row(
                f"... due (token within {args.window:g} s of its "
                f"{args.lifetime:g} s life)",
                refreshes.due,
            ),
            row(
                f"... after a 401 for that token (of {refused_oauth} 401s on "
                "OAuth tokens)",
                refreshes.after_401,
            ),
            row(
                "needless refreshes / expired tokens at the portal",
                len(refreshes.violations or []),
            ),
            row("accounts file after the run", files),
            row("tokens in mitmdump's output", len(leaked)),
        )


def row(label: str, value: object) -> str:
    return f"| {label} | {value} |"


def summarize(
    args: argparse.Namespace,
    report: Report,
    outcomes: list[Outcome],
    record: Record,
    elapsed: float,
    rss: dict[str, int],
    warmup: int,
    curve: list[int],
) -> None:
    reasons: Counter[str] = Counter()
    unexpected: list[str] = []
    for o in outcomes:
        why = classify(o, record.by_tag.get(o.n, []))
        reasons[why if why in ALLOWED else "unexpected"] += 1
        if why not in ALLOWED:
            unexpected.append(f"#{o.n}: {why}")
    faults: Counter[str] = Counter(
        a.fault for attempts in record.by_tag.values() for a in attempts if a.fault
    )
    upstream = sum(len(a) for a in record.by_tag.values())
    served = reasons[SERVED]
    report.add(
        f"{len(outcomes)} requests, {args.concurrency} at a time, in {elapsed:.0f} s "
        f"({len(outcomes) / elapsed:.0f}/s); seed {args.seed}.",
        "",
        "| requests | count |",
        "|---|---:|",
        f"| sent | {len(outcomes)} |",
        f"| served (complete answer, whole text) | {served} |",
    )
    for why, n in sorted(reasons.items()):
        if why != SERVED:
            report.add(f"| failed to the client: {why} | {n} |")
    kinds = Counter(f"{o.kind}{' streamed' if o.stream else ''}" for o in outcomes)
    report.add(
        f"| mix | {', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))} |",
        f"| upstream requests (with failovers and retries) | {upstream} |",
        row(
            "faults injected", ", ".join(f"{k} {v}" for k, v in sorted(faults.items()))
        ),
        "",
        "| mitmdump RSS | |",
        "|---|---:|",
        f"| at start | {mib(rss['start'])} |",
        f"| after warm-up ({warmup} requests) | {mib(rss['warm'])} |",
        f"| at the end | {mib(rss['end'])} |",
        f"| growth after warm-up | {rss['end'] - rss['warm']:+d} KiB |",
        f"| peak | {mib(rss['peak'])} |",
        row("every 1,000 requests", ", ".join(f"{kib / 1024:.1f}" for kib in curve)),
    )
    if len(outcomes) != args.requests:
        report.fail(f"{args.requests - len(outcomes)} requests got no outcome")
    for line in unexpected[:20]:
        report.fail(line)
    if len(unexpected) > 20:
        report.fail(f"... and {len(unexpected) - 20} more unexpected failures")
    if rss["end"] - rss["warm"] > RSS_MARGIN_KIB:
        report.fail(f"RSS grew by {rss['end'] - rss['warm']} KiB after warm-up")


def crash(args: argparse.Namespace, workdir: Path, report: Report) -> None:
    result: CrashReport = crash_cycles(
        workdir / "crash", kills=args.kills, seed_value=args.seed
    )
    report.add(
        "",
        f"| SIGKILL under load ({args.kills} kills) | |",
        "|---|---|",
        row("kills", f"{result.kills} (during a state write: {result.mid_write})"),
        row("requests served meanwhile", result.served),
        row("refreshes (refresh tokens rotated)", result.refreshes),
        row("accounts added by the CLI meanwhile", result.added),
        row(
            "after every kill",
            "both files parse, 0600, no account lost, every persisted refresh "
            "token still refreshes",
        ),
        row(
            "refreshes answered but killed before they were saved",
            f"{result.unsaved} (that login is lost: the server had retired its "
            "refresh token; inherent)",
        ),
    )
    for v in result.violations:
        report.fail(f"crash: {v}")


def machine() -> str:
    return (
        f"{os.cpu_count()} CPUs (nproc), {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, mitmproxy {version('mitmproxy')}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = Report()
    with tempfile.TemporaryDirectory(prefix="qwen-soak-") as tmp:
        workdir = Path(tmp)
        started = time.monotonic()
        print(
            f"== soak: {args.requests} requests, {args.concurrency} at a time",
            flush=True,
        )
        soak(args, workdir, report)
        if args.kills:
            print(f"== {args.kills} SIGKILLs under load", flush=True)
            crash(args, workdir, report)
        total = time.monotonic() - started
    given = argv if argv is not None else sys.argv[1:]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    verdict = (
        "**All invariants held.**"
        if not report.violations
        else "**Invariants failed:**\n\n"
        + "\n".join(f"- {v}" for v in report.violations)
    )
    text = "\n".join(
        [
            "# Soak",
            "",
            f"`{' '.join(['scripts/soak', *given])}`",
            f"on {when}; {machine()}; {total:.0f} s in all.",
            "",
            *report.lines,
            "",
            verdict,
            "",
        ]
    )
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    if not args.quick and not args.no_docs and args.requests == DEFAULT_REQUESTS:
        args.docs.write_text(text)
    return 1 if report.violations else 0
