"""The ``qwen-oauth`` command line: add, list and manage your Qwen accounts.

Exit codes: 0 success; 1 failure (one line on stderr saying why); 2 bad usage;
130 interrupted (Ctrl-C). A traceback is shown only with ``QWEN_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from qwen_oauth_mitm import __version__, redact
from qwen_oauth_mitm.cli.common import Env
from qwen_oauth_mitm.errors import ConfigError, QwenError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

DESCRIPTION = """\
Manage the Qwen accounts the qwen-oauth-mitm proxy rotates between.

Start with `qwen-oauth login`: it shows a link (and a QR code) to approve the
login in a browser, on this machine or any other. Run it again to add more
accounts; the proxy spreads requests over all of them and refreshes their tokens
by itself.

Note: Alibaba ended the free Qwen OAuth tier in April 2026. With a DashScope or
Coding Plan API key, use `qwen-oauth add-key` instead.
"""

EPILOG = """\
examples:
  qwen-oauth login                      add an account (approve it in a browser)
  qwen-oauth login --label work         log in again to the account 'work'
  qwen-oauth accounts                   list accounts and their state
  echo "$KEY" | qwen-oauth add-key      add an API-key account
  qwen-oauth import-qwen-code           reuse the Qwen Code CLI's login

Accounts are kept in $XDG_CONFIG_HOME/opencode/qwen-auth-accounts.json (0600).
Set QWEN_DEBUG=1 for verbose output.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwen-oauth",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "login",
        help="add a Qwen account (or log in again to one) in a browser",
        description="Log in with the OAuth device flow: open the link shown (or scan "
        "the QR code) on any device, approve, and the account is stored. Logging in "
        "to an account that is already stored updates it instead of adding a copy.",
    )
    p.add_argument(
        "--label",
        metavar="NAME",
        help="name for the account; an existing OAuth account's name logs in to it "
        "again (to fix 'needs re-login')",
    )
    p.add_argument(
        "--no-browser",
        action="store_true",
        help="do not open a browser; just print the link (for SSH and headless hosts)",
    )
    p.add_argument("--no-qr", action="store_true", help="do not draw the QR code")

    sub.add_parser(
        "accounts",
        help="list accounts: state, health, requests today, token expiry",
        description="Show every account and what rotation knows of it. Tokens are "
        "never shown. Requests are counted locally: the API does not tell.",
    )

    for name, verb in (
        ("remove", "delete an account from this machine"),
        ("disable", "keep an account but leave it out of rotation"),
        ("enable", "put a disabled account back into rotation"),
    ):
        p = sub.add_parser(
            name, help=verb, description=verb[0].upper() + verb[1:] + "."
        )
        p.add_argument("account", metavar="ACCOUNT", help="label or id")

    p = sub.add_parser(
        "refresh",
        help="refresh OAuth tokens now (all accounts, or one)",
        description="Refresh tokens now. Not needed in normal use: the proxy does it "
        "before they expire. Useful to check that an account still works.",
    )
    p.add_argument("account", metavar="ACCOUNT", nargs="?", help="label or id")

    p = sub.add_parser(
        "add-key",
        help="add an API-key account (DashScope / Coding Plan)",
        description="Add an account that uses an API key for an OpenAI-compatible "
        "endpoint. The key is read from the QWEN_API_KEY environment variable or "
        "from stdin (a hidden prompt on a terminal), never from the command line, "
        "where other users could see it. Key accounts join the same rotation and "
        "never need a refresh.",
    )
    p.add_argument("--label", metavar="NAME", help="name for the account")
    p.add_argument(
        "--base-url",
        metavar="URL",
        help="API base URL (default: base_url from the config, else "
        "https://dashscope.aliyuncs.com/compatible-mode/v1)",
    )

    p = sub.add_parser(
        "import-qwen-code",
        help="adopt the login of the official Qwen Code CLI",
        description="Store the login kept by Qwen Code in ~/.qwen/oauth_creds.json "
        "as an account, so no second login is needed.",
    )
    p.add_argument("--label", metavar="NAME", help="name for the account")
    p.add_argument("--file", type=Path, metavar="PATH", help="another credentials file")
    return parser


def _debug_wanted(environ: Mapping[str, str]) -> bool:
    return environ.get("QWEN_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at the time (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _setup_logging(debug: bool) -> None:
    """Warnings (and with debug, everything) to stderr, redacted; idempotent."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    redact.install_redaction([handler])
    # The CLI says what happened itself; the library logs only warnings here.
    logging.getLogger("qwen_oauth_mitm").setLevel(
        logging.DEBUG if debug else logging.WARNING
    )
    logging.getLogger("httpx").setLevel(logging.INFO if debug else logging.WARNING)


def run(env: Env, args: argparse.Namespace) -> int:
    from qwen_oauth_mitm.cli import commands
    from qwen_oauth_mitm.cli.login import login

    match args.command:
        case "login":
            return asyncio.run(
                login(
                    env, label=args.label, no_browser=args.no_browser, qr=not args.no_qr
                )
            )
        case "accounts":
            return commands.show_accounts(env)
        case "remove":
            return commands.remove(env, args.account)
        case "disable" | "enable":
            return commands.set_disabled(
                env, args.account, disabled=args.command == "disable"
            )
        case "refresh":
            return asyncio.run(commands.refresh(env, args.account))
        case "add-key":
            return commands.add_key(env, label=args.label, base_url=args.base_url)
        case "import-qwen-code":
            return commands.import_qwen_code(env, label=args.label, file=args.file)
    raise AssertionError(args.command)  # pragma: no cover - argparse checks


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``qwen-oauth`` console script."""
    args = build_parser().parse_args(argv)
    debug = _debug_wanted(os.environ)
    try:
        env = Env.from_os()
        debug = debug or env.config.debug
        _setup_logging(debug)
        return run(env, args)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        what = (
            "login cancelled; the accounts file was not changed"
            if args.command == "login"
            else "interrupted"
        )
        sys.stderr.write(f"qwen-oauth: {what}.\n")
        return EXIT_INTERRUPTED
    except QwenError as e:
        if debug:
            sys.stderr.write(redact.redact(traceback.format_exc()))
        message = redact.redact(str(e)).strip().replace("\n", "; ")
        sys.stderr.write(f"qwen-oauth: error: {message}\n")
        # A bad setting is a usage error, like a bad argument.
        return EXIT_USAGE if isinstance(e, ConfigError) else EXIT_FAILURE
    except Exception as e:
        if debug:
            sys.stderr.write(redact.redact(traceback.format_exc()))
            sys.stderr.write(f"qwen-oauth: unexpected error: {redact.redact(str(e))}\n")
        else:
            sys.stderr.write(
                f"qwen-oauth: unexpected error: {type(e).__name__}: "
                f"{redact.redact(str(e))} (set QWEN_DEBUG=1 for details)\n"
            )
        return EXIT_FAILURE
