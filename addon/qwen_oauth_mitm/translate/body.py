"""A request body's bytes → JSON, and the checks a Chat Completions body gets (pure).

``parse_body`` turns every way raw bytes can fail to be usable JSON into a
``TranslationError`` (400): not UTF-8, not JSON, a number too long to read,
``NaN``/``Infinity`` anywhere (named by its path), or nested deeper than
:data:`MAX_DEPTH`. ``json.loads`` itself raises
``RecursionError`` (not ``ValueError``) for a few thousand levels, and a body only
a little shallower than that would still break whatever walks it recursively later
(``json.dumps`` upstream, a deep copy of the flow's metadata), so depth is bounded
here, once, far above what a real request needs (a tool's JSON schema is a few
tens of levels deep).

``check_chat_request`` is the little a ``POST /v1/chat/completions`` body must
satisfy before it is relayed: the proxy passes it on as it is, but reads
``stream``, ``messages`` and ``model`` itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any, NoReturn

from qwen_oauth_mitm.translate._check import (
    as_dict,
    as_list,
    fail,
    opt_bool,
    require_model,
)
from qwen_oauth_mitm.translate.errors import TranslationError

__all__ = ["MAX_DEPTH", "check_chat_request", "parse_body"]

MAX_DEPTH = 200
"""Deepest nesting of arrays and objects a request body may have."""


def parse_body(raw: bytes | bytearray) -> object:
    """Parse a request body; ``TranslationError`` (code ``invalid_json``) if unusable.

    Works on the bytes (``json.loads`` decodes them itself), so no decoded copy of
    a large body is kept beside them.
    """
    try:
        body: object = json.loads(raw)
    except RecursionError:
        _too_deep()
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError included
        reason = "not UTF-8" if isinstance(e, UnicodeDecodeError) else str(e)
        raise TranslationError(
            f"The request body is not valid JSON: {reason}", code="invalid_json"
        ) from None
    _scan(body)
    return body


def check_chat_request(body: object) -> dict[str, Any]:
    """The fields of a Chat Completions body the proxy relies on; 400 naming one."""
    if not isinstance(body, dict):
        raise TranslationError("The request body must be a JSON object.")
    require_model(body, "messages")
    for index, message in enumerate(as_list(body["messages"], "messages")):
        as_dict(message, f"messages[{index}]")
    opt_bool(body.get("stream"), "stream")
    return body


def _too_deep() -> NoReturn:
    raise TranslationError(
        f"The request body is nested too deeply (more than {MAX_DEPTH} levels).",
        code="invalid_json",
    )


def _scan(body: object) -> None:
    """Depth and numbers of every value. ``json.loads`` takes ``NaN``, ``Infinity``
    and ``1e999``, JSON has none of them, and they would reach the portal inside
    fields passed on as they are (a JSON schema, tool parameters): refused here,
    naming the field.

    This runs in the ``request`` hook on bodies of up to the size limit, so it
    costs about what ``json.loads`` did and no memory beyond a stack as deep as the
    body: one iterator per open container (a recursive walk is what a deep body
    breaks), no path kept; the path is looked for only when there is one to name.
    """
    if not isinstance(body, dict | list):
        if isinstance(body, float) and not math.isfinite(body):
            _not_a_number(body, body)
        return
    # type() rather than isinstance: json.loads makes no subclasses, and this loop
    # runs once per value of the body (isinstance of a union costs it 5x).
    stack: list[Iterator[object]] = [_values(body)]
    while stack:
        for child in stack[-1]:
            if type(child) is float:
                if not math.isfinite(child):
                    _not_a_number(child, body)
            elif type(child) is dict or type(child) is list:
                if len(stack) >= MAX_DEPTH:
                    _too_deep()
                if child:  # nothing in an empty one to look at
                    stack.append(_values(child))
                    break
        else:
            stack.pop()


def _values(container: dict[str, object] | list[object]) -> Iterator[object]:
    return iter(container.values() if type(container) is dict else container)


def _not_a_number(value: float, body: object) -> NoReturn:
    if not isinstance(body, dict):  # no field to name
        raise TranslationError(
            f"The request body is not valid JSON: {value}", code="invalid_json"
        )
    where = _format(_path_of(body, value))
    fail(f"Invalid value for '{where}': {value} is not a JSON number.", where)


def _path_of(body: dict[str, object], target: object) -> list[str | int]:
    """The keys down to ``target`` (by identity), walked in :func:`_scan`'s order
    with the same stack, so the first such value is the one it found."""
    keys: list[str | int] = []
    stack = [_items(body)]
    while stack:
        for key, child in stack[-1]:
            if child is target:
                return [*keys, key]
            if isinstance(child, dict | list) and child:
                keys.append(key)
                stack.append(_items(child))
                break
        else:
            stack.pop()
            if keys:
                keys.pop()
    raise AssertionError("the value _scan found is in the body")


def _items(
    container: dict[str, object] | list[object],
) -> Iterator[tuple[str | int, object]]:
    if isinstance(container, dict):
        return iter(container.items())
    return enumerate(container)


def _format(keys: list[str | int]) -> str:
    """``input[2].content[0].text`` (OpenAI's ``param`` style)."""
    out = ""
    for i, key in enumerate(keys):
        # By position, not by ``out``: a first key "" leaves it empty, and the
        # next key would pass for a top-level one ({"": {"instructions": ...}}).
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if i else key)
    return out
