"""``python -m qwen_oauth_mitm.portal``: run the Qwen portal stand-in until stopped.

The first line on stdout is the ready line, ``qwen portal stand-in ready at
http://127.0.0.1:PORT``; the next lines name the environment variables that point
``qwen-oauth`` and the addon at it. It listens on 127.0.0.1 only. Ctrl-C or SIGTERM
stops it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from qwen_oauth_mitm.portal.standin import DEFAULT_TEXT, StandIn

READY = "qwen portal stand-in ready at "


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qwen_oauth_mitm.portal",
        description="A stand-in for the Qwen portal on 127.0.0.1: OAuth device flow "
        "and refresh, /v1/chat/completions, and /admin/faults, /admin/replies and "
        "/admin/stats for "
        "tests and demos. No network, no account.",
    )
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument(
        "--interval", type=float, default=1.0, help="device-flow poll interval, s"
    )
    parser.add_argument(
        "--pending-polls", type=int, default=2, help="polls before a login is approved"
    )
    parser.add_argument(
        "--token-lifetime", type=float, default=21600, help="access token lifetime, s"
    )
    parser.add_argument(
        "--chunk-delay", type=float, default=0.05, help="pause between stream chunks, s"
    )
    parser.add_argument("--text", default=DEFAULT_TEXT, help="the answer's text")
    parser.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="KEY",
        help="an API key to accept as an account of its own (repeatable)",
    )
    args = parser.parse_args(argv)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with StandIn(
        port=args.port,
        keys=args.key,
        text=args.text,
        chunk_delay=args.chunk_delay,
        interval=args.interval,
        pending_polls=args.pending_polls,
        token_lifetime=args.token_lifetime,
    ) as standin:
        out = sys.stdout
        out.write(f"{READY}{standin.base_url}\n")
        out.write(f"  QWEN_OAUTH_BASE_URL={standin.base_url}\n")
        out.write(f"  QWEN_API_BASE_URL={standin.url}\n")
        out.write(
            f"  admin: GET {standin.base_url}/admin/stats, "
            f"POST {standin.base_url}/admin/faults\n"
        )
        out.flush()
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
