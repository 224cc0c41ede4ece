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
from collections.abc import Iterable
from typing import Any, NoReturn

from qwen_oauth_mitm.translate._check import as_dict, as_list, as_str, fail, opt_bool
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
    model = as_str(body.get("model"), "model")
    if not model:
        fail("'model' must not be empty.", "model")
    if body.get("messages") is None:
        fail(
            "Missing required parameter: 'messages'.",
            "messages",
            "missing_required_parameter",
        )
    for index, message in enumerate(as_list(body["messages"], "messages")):
        as_dict(message, f"messages[{index}]")
    opt_bool(body.get("stream"), "stream")
    return body


def _too_deep() -> NoReturn:
    raise TranslationError(
        f"The request body is nested too deeply (more than {MAX_DEPTH} levels).",
        code="invalid_json",
    )


# A path to a value, built only when it is reported: (parent path, key or index).
_Path = tuple["_Path", str | int] | None


def _scan(body: object) -> None:
    """Depth and numbers of every value, iteratively (a recursive walk is what a
    deep body breaks). ``json.loads`` takes ``NaN`` and ``Infinity``, JSON has
    neither, and they would reach the portal inside fields passed on as they are
    (a JSON schema, tool parameters): refused here, naming the field."""
    stack: list[tuple[object, int, _Path]] = [(body, 1, None)]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            if not isinstance(body, dict):  # no field to name
                raise TranslationError(
                    f"The request body is not valid JSON: {item}", code="invalid_json"
                )
            where = _format(path)
            fail(f"Invalid value for '{where}': {item} is not a JSON number.", where)
        if isinstance(item, dict):
            children: Iterable[tuple[str | int, object]] = item.items()
        elif isinstance(item, list):
            children = enumerate(item)
        else:
            continue
        if depth > MAX_DEPTH:
            _too_deep()
        stack.extend((child, depth + 1, (path, key)) for key, child in children)


def _format(path: _Path) -> str:
    """``input[2].content[0].text`` (OpenAI's ``param`` style)."""
    keys: list[str | int] = []
    while path is not None:
        path, key = path
        keys.append(key)
    out = ""
    for key in reversed(keys):
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else key)
    return out
