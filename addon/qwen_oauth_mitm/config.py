"""The configuration: one pydantic model, filled from layers where later ones win.

Layers, in order: built-in defaults < user file ``qwen.json`` < project file
``.opencode/qwen.json`` (looked up from the working directory upward) < environment
variables < mitmproxy ``--set qwen_<key>`` options (a plain dict given by the addon).

Pure apart from :func:`load_config`, which reads the files and the environment it
is given. A bad value is never replaced by a default: it is a :class:`ConfigError`
that names the file or variable, the key, the value and what is allowed. An unknown
key is only a warning, so a typo is seen but does not stop the proxy.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from qwen_oauth_mitm.errors import ConfigError

DEFAULT_CLIENT_ID = "f0304373b74a44d2b584a3fb70ca9e56"
DEFAULT_OAUTH_BASE_URL = "https://chat.qwen.ai"
DEFAULT_API_BASE_URL = "https://portal.qwen.ai/v1"
PROJECT_FILE = Path(".opencode") / "qwen.json"

RotationStrategy = Literal["hybrid", "round-robin", "sequential"]
WEEK = 7 * 24 * 3600
"""Upper bound of every duration: far past any sane setting, and far below what
overflows a socket timeout or a date (``1e300`` seconds would fail every request)."""
NonNegInt = Annotated[int, Field(ge=0, le=WEEK)]
PosFloat = Annotated[float, Field(gt=0, le=WEEK)]


def _header_text(value: str) -> str:
    # A control character or non-ASCII text would make every upstream request
    # fail, or smuggle another header in.
    if len(value) > 512 or not re.fullmatch(r"[\x20-\x7e]*", value):
        raise ValueError("expected printable ASCII text of at most 512 characters")
    return value


def _token_text(value: str) -> str:
    if not re.fullmatch(r"[\x21-\x7e]{1,256}", value):
        raise ValueError("expected 1 to 256 printable ASCII characters without spaces")
    return value


HeaderText = Annotated[str, AfterValidator(_header_text)]
"""An HTTP header value sent to the portal."""
TokenText = Annotated[str, AfterValidator(_token_text)]
"""An identifier sent in forms and URLs (the OAuth client id)."""
Url = Annotated[str, Field(max_length=2048)]


class _Section(BaseModel):
    # allow_inf_nan: "inf" passes float() and every ``> 0`` check.
    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, allow_inf_nan=False
    )


class HealthScoreConfig(_Section):
    """Health score of an account, 0-100 (hybrid strategy)."""

    initial: Annotated[int, Field(ge=0, le=100)] = 70
    """Score of an account never seen before."""
    success_reward: Annotated[int, Field(ge=0, le=100)] = 1
    """Added after a successful request."""
    rate_limit_penalty: Annotated[int, Field(ge=-100, le=0)] = -10
    """Added (a negative number) after a 429 or quota answer."""
    failure_penalty: Annotated[int, Field(ge=-100, le=0)] = -20
    """Added (a negative number) after any other failure that is the account's."""
    recovery_rate_per_hour: Annotated[float, Field(ge=0, le=1000)] = 2.0
    """Points regained per hour of rest."""
    min_usable: Annotated[int, Field(ge=0, le=100)] = 50
    """Below this score an account is left out while a healthier one exists."""


class TokenBucketConfig(_Section):
    """Client-side rate limit per account (hybrid strategy)."""

    max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] = 50
    """Bucket size: requests an account may take in one burst."""
    regeneration_rate_per_minute: Annotated[float, Field(gt=0, le=1_000_000)] = 6.0
    """Tokens regained per minute."""


class UpstreamHeadersConfig(_Section):
    """Headers sent to the portal, by default those of the official Qwen Code CLI."""

    user_agent: HeaderText = "QwenCode/0.2.0 (linux; x64)"
    dashscope_cache_control: HeaderText = "enable"
    dashscope_auth_type: HeaderText = "qwen-oauth"


class TimeoutsConfig(_Section):
    """Bounds on every wait for the upstream, in seconds."""

    connect_seconds: PosFloat = 10.0
    first_byte_seconds: PosFloat = 120.0
    """Until the first byte of the answer; reasoning models can think for long."""
    between_chunks_seconds: PosFloat = 120.0
    refresh_seconds: PosFloat = 20.0
    """How long a request waits for a token refresh before it fails over (in the
    proxy the refresh itself goes on in the background and saves its result)."""


class Config(_Section):
    """Every option, with the reference plugin's defaults.

    The first block is the reference README's contract; the rest is ours.
    """

    rotation_strategy: RotationStrategy = "hybrid"
    proactive_refresh: bool = True
    refresh_window_seconds: NonNegInt = 300
    max_rate_limit_wait_seconds: NonNegInt = 300
    """0 means wait without limit."""
    quiet_mode: bool = False
    pid_offset_enabled: bool = False
    health_score: HealthScoreConfig = HealthScoreConfig()
    token_bucket: TokenBucketConfig = TokenBucketConfig()
    client_id: TokenText = DEFAULT_CLIENT_ID
    oauth_base_url: Url = DEFAULT_OAUTH_BASE_URL
    base_url: Url | None = None
    """API base for every account; unset means each account's own resource_url."""
    debug: bool = False

    conversation_affinity: bool = True
    """Keep a conversation on the account that served it last (prompt cache)."""
    default_cooldown_seconds: Annotated[int, Field(ge=1, le=WEEK)] = 60
    """Cooldown after a 429 that says nothing of when to retry."""
    quota_reset_timezone: str = "Asia/Shanghai"
    """Time zone whose midnight ends a daily-quota cooldown (IANA name or UTC±HH:MM)."""
    upstream_headers: UpstreamHeadersConfig = UpstreamHeadersConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    log_file: str | None = None
    """Also write the log (redacted) to this file."""
    max_request_body_mb: Annotated[int, Field(ge=1, le=1024)] = 32
    """Largest request body (MiB) taken for the portal; larger ones get a 413.

    32 MiB: OpenCode sends images inline as base64 data URLs, and a long session
    plus a few screenshots reaches a few MiB; far more than that is no prompt the
    portal would take (its context is about a million tokens, some 4 MiB of text).
    """

    @field_validator("quota_reset_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        parse_timezone(value)
        return value

    @field_validator("oauth_base_url", "base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            check_http_url(value)
        return value

    @field_validator("log_file")
    @classmethod
    def _log_path(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None  # "": no log file (how ``--set`` turns it off again)
        if "\x00" in value:
            raise ValueError("expected a file path")
        path = os.path.expanduser(value)
        if not os.path.isabs(path):
            # Relative to whatever folder mitmdump was started in: ambiguous.
            raise ValueError("expected an absolute path (or one starting with ~/)")
        return path


def check_http_url(value: str) -> None:
    """An ``http(s)://host[:port][/path]`` URL; ``ValueError`` saying what is wrong."""
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("expected a URL without spaces or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError("expected a URL such as https://portal.qwen.ai/v1") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL with a host name")
    if parts.username is not None or parts.password is not None:
        raise ValueError("expected a URL without user name or password")
    if port == 0:
        raise ValueError("expected a port between 1 and 65535")


def parse_timezone(name: str) -> dt.tzinfo:
    """Return a tzinfo for an IANA name or a fixed ``UTC+08:00`` style offset."""
    if name.upper().startswith("UTC") and len(name) > 3:
        return _parse_utc_offset(name)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ValueError(
            f"unknown time zone {shown(name, 40)}; use an IANA name such as "
            "'Asia/Shanghai' "
            "or an offset such as 'UTC+08:00'"
        ) from e


def _parse_utc_offset(name: str) -> dt.timezone:
    """``UTC+8``, ``UTC+08:00`` or ``UTC-05:30`` as a fixed-offset time zone."""
    m = re.fullmatch(r"UTC([+-])(\d{1,2})(?::?(\d{2}))?", name.upper())
    if not m or int(m[2]) > 14 or int(m[3] or 0) >= 60:
        raise ValueError(f"bad UTC offset {shown(name, 40)}; expected e.g. 'UTC+08:00'")
    minutes = int(m[2]) * 60 + int(m[3] or 0)
    return dt.timezone(dt.timedelta(minutes=minutes if m[1] == "+" else -minutes))


# --- environment variables --------------------------------------------------------

ENV_VARS: Mapping[str, str] = {
    "QWEN_OAUTH_CLIENT_ID": "client_id",
    "QWEN_OAUTH_BASE_URL": "oauth_base_url",
    "QWEN_API_BASE_URL": "base_url",
    "QWEN_ROTATION_STRATEGY": "rotation_strategy",
    "QWEN_PROACTIVE_REFRESH": "proactive_refresh",
    "QWEN_REFRESH_WINDOW_SECONDS": "refresh_window_seconds",
    "QWEN_MAX_RATE_LIMIT_WAIT_SECONDS": "max_rate_limit_wait_seconds",
    "QWEN_QUIET_MODE": "quiet_mode",
    "QWEN_PID_OFFSET_ENABLED": "pid_offset_enabled",
    "QWEN_DEBUG": "debug",
}
"""Variable name -> config key (dotted for nested keys)."""

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def leaf_types() -> dict[str, type]:
    """Every settable key (``health_score.initial`` for nested ones) and its type."""
    out: dict[str, type] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            ann = info.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
                continue
            if typing.get_origin(ann) in (typing.Union, types.UnionType):
                ann = next(a for a in typing.get_args(ann) if a is not type(None))
            if typing.get_origin(ann) is Annotated:
                ann = typing.get_args(ann)[0]
            out[prefix + name] = ann if isinstance(ann, type) else str  # Literal: text

    walk(Config, "")
    return out


def parse_text_value(key: str, text: str) -> object:
    """Turn the text of an env var or ``--set`` option into the type ``key`` needs.

    Raises ``ValueError`` with what is allowed; the caller names the source.
    """
    kind = leaf_types()[key]
    stripped = text.strip()
    if kind is bool:
        low = stripped.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError("expected a boolean: true/false, 1/0, yes/no or on/off")
    # int() and float() also take other scripts' digits and "1_000"; only ASCII
    # digits are a number here, and "nan"/"inf" are refused by the model.
    if kind is int:
        if not re.fullmatch(r"[+-]?[0-9]+", stripped):
            raise ValueError("expected a whole number")
        try:
            return int(stripped)
        except ValueError:  # past Python's 4300-digit limit
            raise ValueError("expected a whole number") from None
    if kind is float:
        try:
            if not stripped.isascii() or "_" in stripped:
                raise ValueError
            return float(stripped)
        except ValueError:
            raise ValueError("expected a number") from None
    return text


# --- layers -------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """One source of config values: a nested dict and where each key came from."""

    name: str
    """Shown in errors: a file path, 'environment variable X', '--set qwen_x'."""
    values: Mapping[str, Any]
    origins: Mapping[str, str] = field(default_factory=dict)
    """Dotted key -> a more precise source name (an env var per key)."""

    def origin_of(self, dotted: str) -> str:
        return self.origins.get(dotted, self.name)


@dataclass(frozen=True)
class LoadedConfig:
    config: Config
    warnings: tuple[str, ...]
    sources: tuple[str, ...]
    """The layers that contributed, in order (for `qwen-oauth` status output)."""


def file_layer(path: Path) -> Layer | None:
    """Read a JSON config file; ``None`` when it does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {e.start})"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"config file {path} is not valid JSON: {e.msg} "
            f"(line {e.lineno}, column {e.colno})"
        ) from e
    except (ValueError, RecursionError) as e:  # too deep, a number too long
        raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a JSON object, not {_kind(data)}"
        )
    data.pop("$schema", None)
    return Layer(str(path), data)


def env_layer(env: Mapping[str, str]) -> Layer:
    """The config keys set by environment variables (their text parsed)."""
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for var, key in ENV_VARS.items():
        if var not in env:
            continue
        origin = f"environment variable {var}"
        try:
            value = parse_text_value(key, env[var])
        except ValueError as e:
            raise ConfigError(_bad_value(origin, key, env[var], str(e))) from None
        _set_dotted(values, key, value)
        origins[key] = origin
    return Layer("environment", values, origins)


def options_layer(options: Mapping[str, Any], name: str = "mitmproxy option") -> Layer:
    """A layer from flat dotted keys (``health_score.initial``), typed or text."""
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for key, raw in options.items():
        origin = f"{name} {key}"
        value = raw
        if isinstance(raw, str) and key in leaf_types():
            try:
                value = parse_text_value(key, raw)
            except ValueError as e:
                raise ConfigError(_bad_value(origin, key, raw, str(e))) from None
        _set_dotted(values, key, value)
        origins[key] = origin
    return Layer(name, values, origins)


def find_project_file(start: Path) -> Path | None:
    """``.opencode/qwen.json`` in ``start`` or the nearest folder above it."""
    for folder in (start, *start.parents):
        candidate = folder / PROJECT_FILE
        if candidate.is_file():
            return candidate
    return None


def merge_layers(layers: Iterable[Layer]) -> LoadedConfig:
    """Merge layers (later wins, nested dicts key by key) and validate the result."""
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    warnings: list[str] = []
    sources: list[str] = []
    known = leaf_types()
    sections = {k.split(".", 1)[0] for k in known if "." in k}
    for layer in layers:
        sources.append(layer.name)
        for dotted, value in _flatten(layer.values, sections):
            if dotted in sections:
                raise ConfigError(
                    _bad_value(
                        layer.origin_of(dotted), dotted, value, "expected an object"
                    )
                )
            if dotted not in known:
                warnings.append(
                    f"{layer.origin_of(dotted)}: unknown config key {dotted!r} ignored"
                    + _suggest(dotted, known)
                )
                continue
            _set_dotted(merged, dotted, value)
            origin[dotted] = layer.origin_of(dotted)
    try:
        config = Config.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(_explain(e, merged, origin)) from None
    return LoadedConfig(config, tuple(warnings), tuple(sources))


def load_config(
    *,
    user_file: Path,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    options: Mapping[str, Any] | None = None,
) -> LoadedConfig:
    """Read every layer and merge them. ``env`` defaults to ``os.environ``."""
    layers: list[Layer] = [Layer("built-in defaults", {})]
    for path in (user_file, find_project_file(cwd)):
        if path is not None and (layer := file_layer(path)) is not None:
            layers.append(layer)
    layers.append(env_layer(os.environ if env is None else env))
    if options:
        layers.append(options_layer(options))
    return merge_layers(layers)


# --- helpers ------------------------------------------------------------------------


def _flatten(
    values: Mapping[str, Any], sections: set[str]
) -> Iterable[tuple[str, Any]]:
    for key, value in values.items():
        if key in sections and isinstance(value, Mapping):
            for sub, subvalue in value.items():
                yield f"{key}.{sub}", subvalue
        else:
            yield key, value


def _set_dotted(target: dict[str, Any], dotted: str, value: object) -> None:
    head, _, rest = dotted.partition(".")
    if rest:
        target.setdefault(head, {})[rest] = value
    else:
        target[head] = value


def _explain(
    error: ValidationError, merged: Mapping[str, Any], origin: dict[str, str]
) -> str:
    lines = []
    for item in error.errors():
        loc = [str(p) for p in item["loc"] if isinstance(p, str)]
        dotted = ".".join(loc[:2])
        value = (
            merged.get(loc[0]) if len(loc) == 1 else merged.get(loc[0], {}).get(loc[1])
        )
        source = origin.get(dotted, "config")
        lines.append(_bad_value(source, dotted, value, _allowed(item)))
    return "\n".join(lines)


def _allowed(item: Any) -> str:
    msg = str(item["msg"])
    if item["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
    return msg[0].lower() + msg[1:]


def _bad_value(source: str, key: str, value: object, allowed: str) -> str:
    return f"{source}: invalid value {shown(value)} for {key!r}: {allowed}"


def shown(value: object, limit: int = 80) -> str:
    """``value`` as JSON for a message, cut to about ``limit`` characters."""
    try:
        text = json.dumps(value)  # ASCII: control characters come out escaped
    except (TypeError, ValueError):
        text = ascii(value)
    if len(text) > limit:
        text = f"{text[:limit]}… ({len(text)} characters)"
    return text


def _suggest(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _kind(value: object) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )
