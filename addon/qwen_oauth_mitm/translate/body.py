"""A request body's bytes → JSON, and the checks a Chat Completions body gets (pure).

``parse_body`` turns every way raw bytes can fail to be usable JSON into a
``TranslationError`` (400): not UTF-8, not JSON, a number too long to read, or
nested deeper than :data:`MAX_DEPTH`. ``json.loads`` itself raises
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
    if _depth_exceeds(body, MAX_DEPTH):
        _too_deep()
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


def _depth_exceeds(value: object, limit: int) -> bool:
    """Whether arrays/objects nest deeper than ``limit`` (iterative: no recursion)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
