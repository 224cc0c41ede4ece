"""TranslationError's body and the upstream error normaliser."""

from __future__ import annotations

import json

import pytest

from qwen_oauth_mitm.errors import QwenError
from qwen_oauth_mitm.translate import TranslationError, upstream_error_body


def test_translation_error_body() -> None:
    error = TranslationError("Bad.", param="input[0]", code="invalid_type")
    assert isinstance(error, QwenError)
    assert error.status == 400
    assert str(error) == "Bad."
    body = {
        "error": {
            "message": "Bad.",
            "type": "invalid_request_error",
            "param": "input[0]",
            "code": "invalid_type",
        }
    }
    assert error.body() == body
    assert json.loads(error.body_bytes()) == body


@pytest.mark.parametrize(
    ("status", "raw", "expected"),
    [
        (
            429,
            b'{"error":{"code":"insufficient_quota","type":"insufficient_quota",'
            b'"message":"Free allocated quota exceeded."}}',
            (
                "Free allocated quota exceeded.",
                "insufficient_quota",
                None,
                "insufficient_quota",
            ),
        ),
        (
            400,
            b'{"code":"InvalidParameter","message":"bad","param":"messages"}',
            ("bad", "InvalidParameter", "messages", "InvalidParameter"),
        ),
        (
            401,
            b'{"error": "token expired"}',
            ("token expired", "authentication_error", None, "authentication_error"),
        ),
        (
            403,
            b"{}",
            (
                "upstream answered HTTP 403",
                "permission_error",
                None,
                "permission_error",
            ),
        ),
        (
            429,
            b"",
            (
                "upstream answered HTTP 429 with a body that is not JSON",
                "rate_limit_exceeded",
                None,
                "rate_limit_exceeded",
            ),
        ),
        (
            504,
            b"<html>Gateway Timeout</html>",
            (
                "upstream answered HTTP 504 with a body that is not JSON",
                "server_error",
                None,
                "server_error",
            ),
        ),
        (
            500,
            b'{"error": {"code": 42, "message": 7}}',
            ("upstream answered HTTP 500", "42", None, "42"),
        ),
        (
            404,
            b"[1]",
            (
                "upstream answered HTTP 404 with a body that is not JSON",
                "invalid_request_error",
                None,
                "invalid_request_error",
            ),
        ),
    ],
)
def test_upstream_error_body(
    status: int, raw: bytes, expected: tuple[str, str, str | None, str]
) -> None:
    error = upstream_error_body(status, raw)["error"]
    assert (error["message"], error["type"], error["param"], error["code"]) == expected
