"""Every config key as a mitmproxy option ``qwen_<key>``: the top config layer.

Nested keys are flattened with ``_`` (``health_score.initial`` becomes
``qwen_health_score_initial``). mitmproxy's ``--set`` cannot parse floats and has no
optional bool, so:

- whole numbers are ``Optional[int]``;
- text, numbers with a fraction, and booleans are ``Optional[str]``, parsed by
  :func:`qwen_oauth_mitm.config.parse_text_value` (booleans accept true/false, 1/0,
  yes/no, on/off).

Every option defaults to unset (``None``): unset means "whatever the lower layers
say" (``qwen.json``, ``.opencode/qwen.json``, ``QWEN_*`` variables, built-in
defaults). Only the options the user set reach :func:`config.load_config`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from mitmproxy import addonmanager

from qwen_oauth_mitm.config import Config, leaf_types

PREFIX = "qwen_"
log = logging.getLogger(__name__)

HELP: Mapping[str, str] = {
    "rotation_strategy": "How to choose an account: hybrid, round-robin or sequential.",
    "proactive_refresh": "Keep every enabled OAuth account's token fresh in the "
    "background, ahead of the refresh window.",
    "refresh_window_seconds": "Refresh a token this many seconds before it expires.",
    "max_rate_limit_wait_seconds": "When every account is rate-limited, wait at "
    "most this long for one to come back before answering 429 (0: no limit).",
    "quiet_mode": "Log only warnings and errors.",
    "pid_offset_enabled": "Spread several proxy processes over the accounts by "
    "their process id.",
    "health_score.initial": "Hybrid strategy: health score (0-100) of an account "
    "never seen before.",
    "health_score.success_reward": "Hybrid strategy: health added after a success.",
    "health_score.rate_limit_penalty": "Hybrid strategy: health added (negative) "
    "after a 429 or quota answer.",
    "health_score.failure_penalty": "Hybrid strategy: health added (negative) after "
    "another failure that is the account's.",
    "health_score.recovery_rate_per_hour": "Hybrid strategy: health regained per "
    "hour of rest.",
    "health_score.min_usable": "Hybrid strategy: below this health an account is "
    "left out while a healthier one exists.",
    "token_bucket.max_tokens": "Client-side rate limit per account: requests in "
    "one burst.",
    "token_bucket.regeneration_rate_per_minute": "Client-side rate limit per "
    "account: requests regained per minute.",
    "client_id": "OAuth client id used for token refresh.",
    "oauth_base_url": "OAuth server used for token refresh.",
    "base_url": "API base for every account (e.g. https://portal.qwen.ai/v1). Its "
    "host is also intercepted and is an allowed destination for tokens. Unset: "
    "each account's own resource_url.",
    "debug": "Verbose (debug) logging.",
    "conversation_affinity": "Keep a conversation on the account that served it "
    "last (prompt cache).",
    "default_cooldown_seconds": "Cooldown after a 429 that says nothing of when to "
    "retry.",
    "quota_reset_timezone": "Time zone whose midnight ends a daily-quota cooldown "
    "(IANA name or UTC+08:00).",
    "upstream_headers.user_agent": "User-Agent (and X-DashScope-UserAgent) sent to "
    "the portal.",
    "upstream_headers.dashscope_cache_control": "X-DashScope-CacheControl sent to "
    "the portal.",
    "upstream_headers.dashscope_auth_type": "X-DashScope-AuthType sent to the portal.",
    "timeouts.connect_seconds": "Seconds to connect to the portal.",
    "timeouts.first_byte_seconds": "Seconds to wait for the portal's answer to start.",
    "timeouts.between_chunks_seconds": "Seconds to wait between two chunks of a "
    "streamed answer.",
    "timeouts.refresh_seconds": "Seconds a request waits for a token refresh.",
    "log_file": "Also write the (redacted) log to this file.",
    "max_request_body_mb": "Largest request body (MiB) the proxy takes for the "
    "portal; a larger one is answered 413 without being buffered.",
}


def option_name(key: str) -> str:
    """``health_score.initial`` -> ``qwen_health_score_initial``."""
    return PREFIX + key.replace(".", "_")


def option_keys() -> dict[str, str]:
    """Option name -> dotted config key, for every settable key."""
    return {option_name(key): key for key in leaf_types()}


def _default_of(key: str) -> object:
    value: Any = Config()
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _help(key: str, kind: type) -> str:
    text = HELP.get(key, f"Config key {key}.")
    kind_text = {
        bool: "true/false",
        int: "a whole number",
        float: "a number",
    }.get(kind, "text")
    return (
        f"{text} ({kind_text}; config key '{key}'; built-in default "
        f"{_default_of(key)!r}; unset: qwen.json / QWEN_* variables decide)"
    )


def register(loader: addonmanager.Loader) -> None:
    """Add every ``qwen_`` option (call from the addon's ``load``)."""
    for key, kind in leaf_types().items():
        typespec: type = int if kind is int else str
        loader.add_option(
            option_name(key),
            typespec | None,  # type: ignore[arg-type]
            None,
            _help(key, kind),
        )


def guard_deferred(opts: Any) -> list[str]:
    """Defuse the ``--set qwen_*`` values mitmproxy would choke on; returns (and
    logs at error level) what is wrong.

    mitmproxy defers ``--set`` values for a script's options until the script
    registers them (``OptionManager.process_deferred``, right after ``load``).
    If one of them cannot be parsed there (the same option given twice, or a
    non-integer for a whole-number option), the ``OptionsError`` escapes the
    script loader's reload task, which dies silently: the addon is registered
    but never hooked in, and flows go to the real portal with the client's own
    key (mitmproxy 12.3.1, ``addons/script.py`` ``Script.loadscript``). So each
    such value is taken out of the deferred set and reported; the error line
    makes mitmdump (and mitmweb) exit at startup, saying why.
    """
    problems: list[str] = []
    deferred: dict[str, Any] = getattr(opts, "deferred", {})
    for name, value in list(deferred.items()):
        if not name.startswith(PREFIX):
            continue
        values = getattr(value, "val", None)  # mitmproxy's _UnconvertedStrings
        if not isinstance(values, list):
            continue
        key = option_keys().get(name)
        problem: str | None = None
        if len(values) > 1:
            problem = (
                f"--set {name} was given {len(values)} times ({', '.join(values)}); "
                "give it once"
            )
        elif key is not None and leaf_types()[key] is int and values and values[0]:
            try:
                int(values[0])
            except ValueError:
                problem = f"--set {name}={values[0]}: not a whole number"
        if problem is not None:
            del deferred[name]
            problems.append(problem)
    for problem in problems:
        log.error(
            "%s. (mitmproxy would otherwise leave the Qwen addon out silently and "
            "send requests to the real portal unchanged.)",
            problem,
        )
    return problems


def set_options(options: object) -> dict[str, Any]:
    """Dotted key -> value of every ``qwen_`` option the user set (not ``None``)."""
    out: dict[str, Any] = {}
    for name, key in option_keys().items():
        value = getattr(options, name, None)
        if value is not None:
            out[key] = value
    return out
