"""Logging for the addon: levels from the config, a debug stream, a log file.

Everything goes through :mod:`logging` (``ctx.log`` is deprecated); mitmproxy's
terminal log shows info and up. ``quiet_mode`` raises our package logger to
warnings; ``debug`` lowers it to debug and adds a stderr handler for the lines
below info (which the terminal log would hide); ``log_file`` adds a file. Both
extra handlers redact every registered secret, like the terminal log does once
:func:`redact.install_redaction` ran.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from qwen_oauth_mitm import redact
from qwen_oauth_mitm.config import Config
from qwen_oauth_mitm.errors import ConfigError
from qwen_oauth_mitm.store import tighten_permissions

PACKAGE_LOGGER = logging.getLogger("qwen_oauth_mitm")
QUIET_LIBRARIES = ("httpx", "httpcore")
"""Loggers held at warnings: mitmproxy's root logger is at debug, and it turns
every record into an ``add_log`` event that visits every addon, on the event
loop. httpcore writes ten debug records per upstream request and httpx an info
line that repeats ours: together they were a third of the proxy's own cost per
request (see docs/benchmarks.md). Our own lines say what happened."""
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LogSetup:
    """The handlers the addon added, so a new config can replace them."""

    def __init__(self) -> None:
        self._handlers: list[logging.Handler] = []

    def apply(self, cfg: Config) -> None:
        """Set levels and handlers for ``cfg``; ``ConfigError`` if the file fails."""
        level = logging.DEBUG if cfg.debug else logging.INFO
        PACKAGE_LOGGER.setLevel(logging.WARNING if cfg.quiet_mode else level)
        for name in QUIET_LIBRARIES:
            logging.getLogger(name).setLevel(logging.WARNING)
        self.close()
        if cfg.debug:
            debug = logging.StreamHandler(sys.stderr)
            debug.addFilter(lambda record: record.levelno < logging.INFO)
            self._handlers.append(debug)
        if cfg.log_file:
            try:
                self._handlers.append(_private_file_handler(Path(cfg.log_file)))
            except OSError as e:
                raise ConfigError(
                    f"cannot open log_file {cfg.log_file!r}: {e.strerror or e}"
                ) from None
        flt = redact.RedactingFilter()
        fmt = logging.Formatter(FORMAT)
        for handler in self._handlers:
            handler.addFilter(flt)
            handler.setFormatter(fmt)
            PACKAGE_LOGGER.addHandler(handler)

    def close(self) -> None:
        for handler in self._handlers:
            PACKAGE_LOGGER.removeHandler(handler)
            handler.close()
        self._handlers = []


def _private_file_handler(path: Path) -> logging.FileHandler:
    """A handler appending to ``path``, created 0600 (FileHandler would use the
    umask, often 0644: the log names accounts, e-mails and requests); an existing
    file readable by others is tightened, with a warning."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    if path.is_file():  # not /dev/stderr or a FIFO: those are not ours to change
        tighten_permissions(path)
    return logging.FileHandler(path, encoding="utf-8")
