"""Small type checks that turn a wrong shape into a TranslationError naming the field.

``param`` strings follow OpenAI's own style: ``input[2].content[0].image_url``.
"""

from __future__ import annotations

import math
from typing import Any, NoReturn

from qwen_oauth_mitm.translate.errors import TranslationError

_TYPE_NAMES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
}


def fail(message: str, param: str | None, code: str = "invalid_value") -> NoReturn:
    raise TranslationError(message, param=param, code=code)


def unsupported(message: str, param: str) -> NoReturn:
    raise TranslationError(message, param=param, code="unsupported_value")


def _wrong_type(value: object, expected: str, param: str) -> NoReturn:
    got = "null" if value is None else type(value).__name__
    fail(
        f"Invalid type for '{param}': expected {expected}, got {got}.",
        param,
        "invalid_type",
    )


def as_dict(value: object, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _wrong_type(value, "an object", param)
    return value


def as_list(value: object, param: str) -> list[Any]:
    if not isinstance(value, list):
        _wrong_type(value, "an array", param)
    return value


def as_str(value: object, param: str) -> str:
    if not isinstance(value, str):
        _wrong_type(value, "a string", param)
    return value


def opt_str(value: object, param: str) -> str | None:
    return None if value is None else as_str(value, param)


def opt_bool(value: object, param: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    _wrong_type(value, "a boolean", param)


def _shown(value: int | float) -> str:
    """``value`` for a message; JSON ints can be too long to print (or to read)."""
    if isinstance(value, int) and value.bit_length() > 64:
        sign = "a negative" if value < 0 else "a"
        return f"{sign} {value.bit_length()}-bit integer"
    return repr(value)


def opt_int(value: object, param: str, *, minimum: int) -> int | None:
    """An integer ≥ ``minimum``; any size (callers clamp it, never convert it)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        _wrong_type(value, "an integer", param)
    if value < minimum:
        fail(
            f"Invalid '{param}': must be at least {minimum}, got {_shown(value)}.",
            param,
        )
    return value


def opt_number(value: object, param: str, *, low: float, high: float) -> float | None:
    """A number in ``[low, high]``: no NaN or infinity, and no overflow on huge ints.

    Python compares an int with a float exactly, however large the int, whereas
    ``math.isfinite(10**400)`` raises OverflowError; so ints are never converted.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        _wrong_type(value, "a number", param)
    finite = isinstance(value, int) or math.isfinite(value)
    if not (finite and low <= value <= high):
        fail(f"Invalid '{param}': must be between {low:g} and {high:g}.", param)
    return value


def opt_of(value: object, param: str, kind: type) -> object:
    """``value`` when it is None or of ``kind``; a bool never passes as a number."""
    if value is None:
        return None
    is_bool = isinstance(value, bool)
    if isinstance(value, kind) and (kind is bool or not is_bool):
        return value
    _wrong_type(value, _TYPE_NAMES.get(kind, kind.__name__), param)


def one_of(value: str, param: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        shown = ", ".join(repr(a) for a in allowed)
        fail(f"Invalid value for '{param}': {value!r}. Supported: {shown}.", param)
    return value


def require_model(body: dict[str, Any], required: str) -> str:
    """A request's model (a non-empty string), its ``required`` field present
    (``input`` for Responses, ``messages`` for Chat Completions); 400 otherwise."""
    model = as_str(body.get("model"), "model")
    if not model:
        fail("'model' must not be empty.", "model")
    if body.get(required) is None:
        fail(
            f"Missing required parameter: '{required}'.",
            required,
            "missing_required_parameter",
        )
    return model
