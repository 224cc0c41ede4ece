"""Errors of the translation layer, in the Responses API's error shape (pure).

``TranslationError`` is what every bad request becomes (HTTP 400 naming the field);
it also carries upstream failures the translator has to report (HTTP 502). The shell
answers with ``status`` and ``body()``; nothing here formats anything else.
"""

from __future__ import annotations

import json
from typing import Any

from qwen_oauth_mitm.errors import QwenError

__all__ = ["TranslationError", "upstream_error_body", "upstream_error_fields"]


class TranslationError(QwenError):
    """A request (or answer) that cannot be translated; safe to show the client."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = "invalid_value",
        status: int = 400,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status
        self.error_type = error_type

    def body(self) -> dict[str, Any]:
        """The Responses API error body: ``{"error": {message, type, param, code}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body_bytes(self) -> bytes:
        """``body()`` as compact JSON bytes, ready to send."""
        return json.dumps(self.body(), separators=(",", ":")).encode()


def _text(value: object) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def upstream_error_body(status: int, raw: bytes) -> dict[str, Any]:
    """Normalise an upstream (Chat Completions) error body to the Responses shape.

    Qwen already answers ``{"error": {"code", "type", "message"}}``; other shapes
    (DashScope's flat ``{"code","message"}``, a string, an HTML 504 page) are mapped
    so the client always gets string ``code``/``type`` and a readable message.
    """
    try:
        parsed: object = json.loads(raw)
    except (ValueError, RecursionError):
        parsed = None
    return {"error": upstream_error_fields(status, parsed)}


def upstream_error_fields(status: int, parsed: object) -> dict[str, Any]:
    """``{message, type, param, code}`` from a parsed error body (None: unparsable)."""
    inner: object = parsed.get("error", parsed) if isinstance(parsed, dict) else None
    if isinstance(inner, str):
        inner = {"message": inner}
    fields = inner if isinstance(inner, dict) else {}
    raw_message = fields.get("message")
    message = (raw_message if isinstance(raw_message, str) else "") or (
        f"upstream answered HTTP {status}"
        + ("" if isinstance(parsed, dict) else " with a body that is not JSON")
    )
    code = _text(fields.get("code"))
    error_type = _text(fields.get("type")) or code or _default_type(status)
    param = fields.get("param")
    return {
        "message": message,
        "type": error_type,
        "param": param if isinstance(param, str) else None,
        "code": code or error_type,
    }


def _default_type(status: int) -> str:
    if status == 429:
        return "rate_limit_exceeded"
    if status in (401, 403):
        return "authentication_error" if status == 401 else "permission_error"
    if 400 <= status < 500:
        return "invalid_request_error"
    return "server_error"
