"""Non-streamed chat.completion → Responses response object."""

from __future__ import annotations

import json
from typing import Any

import pytest

from qwen_oauth_mitm.translate import (
    TranslationError,
    counter_ids,
    translate_request,
    translate_response,
)
from qwen_oauth_mitm.translate.output import REASONING_MARKER

from .helpers import NOW, request_body


def _completion(
    message: dict[str, Any],
    finish: str | None = "stop",
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "coder-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", **message},
                "finish_reason": finish,
            }
        ],
        "usage": usage,
    }


def _translate(raw: Any) -> dict[str, Any]:
    request = translate_request(request_body(stream=False, model="my-model"))
    return translate_response(raw, request, ids=counter_ids(), now=NOW)


def test_text_reasoning_calls_and_usage() -> None:
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "total_tokens": 120,
        "prompt_tokens_details": {"cached_tokens": 64},
        "completion_tokens_details": {"reasoning_tokens": 7},
    }
    calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "read", "arguments": '{"p":1}'},
        },
    ]
    message = {"content": "Hi", "reasoning_content": "hmm", "tool_calls": calls}
    response = _translate(
        json.dumps(_completion(message, "tool_calls", usage)).encode()
    )
    assert response["id"] == "resp_0001"
    assert response["object"] == "response"
    assert response["created_at"] == NOW
    assert response["model"] == "my-model"
    assert response["status"] == "completed"
    assert response["incomplete_details"] is None
    assert response["output"] == [
        {
            "id": "rs_0001",
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": "hmm"}],
            "encrypted_content": REASONING_MARKER,
        },
        {
            "id": "msg_0001",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [
                {"type": "output_text", "text": "Hi", "annotations": [], "logprobs": []}
            ],
        },
        {
            "id": "fc_0001",
            "type": "function_call",
            "status": "completed",
            "arguments": '{"p":1}',
            "call_id": "call_1",
            "name": "read",
        },
    ]
    assert response["usage"] == {
        "input_tokens": 100,
        "input_tokens_details": {"cached_tokens": 64, "cache_write_tokens": 0},
        "output_tokens": 20,
        "output_tokens_details": {"reasoning_tokens": 7},
        "total_tokens": 120,
    }


def test_only_tool_calls_means_no_message_item() -> None:
    calls = [{"id": None, "function": {"name": "read", "arguments": "{}"}}]
    response = _translate(_completion({"content": None, "tool_calls": calls}))
    (item,) = response["output"]
    assert item["type"] == "function_call"
    assert item["call_id"] == "call_0001"


@pytest.mark.parametrize(
    ("function", "name", "arguments"),
    [
        ({"name": "read", "arguments": None}, "read", ""),
        ({"name": None, "arguments": '{"p":1}'}, "", '{"p":1}'),
        ({"name": None, "arguments": None}, "", ""),
        ({"name": "read"}, "read", ""),
    ],
)
def test_null_tool_call_fields_are_empty_strings(
    function: dict[str, Any], name: str, arguments: str
) -> None:
    # As in the stream path, a null arguments/name is an empty one, not a 502.
    calls = [{"id": "call_1", "type": "function", "function": function}]
    response = _translate(_completion({"content": None, "tool_calls": calls}))
    (item,) = response["output"]
    assert item["type"] == "function_call"
    assert (item["name"], item["arguments"]) == (name, arguments)
    assert item["call_id"] == "call_1"


def test_null_content_fields_are_empty() -> None:
    message = {
        "content": None,
        "reasoning_content": None,
        "refusal": None,
        "tool_calls": None,
    }
    response = _translate(_completion(message))
    (item,) = response["output"]
    assert item["content"][0]["text"] == ""


def test_empty_answer_still_has_a_message() -> None:
    response = _translate(_completion({"content": None}))
    assert response["output"][0]["content"][0]["text"] == ""
    assert response["usage"]["total_tokens"] == 0


@pytest.mark.parametrize(
    ("finish", "status", "reason"),
    [
        ("stop", "completed", None),
        ("tool_calls", "completed", None),
        ("length", "incomplete", "max_output_tokens"),
        ("content_filter", "incomplete", "content_filter"),
        (None, "completed", None),
    ],
)
def test_finish_reason_to_status(
    finish: str | None, status: str, reason: str | None
) -> None:
    response = _translate(_completion({"content": "x"}, finish))
    assert response["status"] == status
    details = response["incomplete_details"]
    assert (details and details["reason"]) == reason


def test_refusal_becomes_visible_text() -> None:
    response = _translate(_completion({"content": None, "refusal": "No."}))
    assert response["output"][0]["content"][0]["text"] == "No."


def test_choice_index_zero_is_used() -> None:
    raw = _completion({"content": "zero"})
    raw["choices"].insert(0, {"index": 1, "message": {"content": "one"}})
    assert _translate(raw)["output"][0]["content"][0]["text"] == "zero"


@pytest.mark.parametrize(
    ("raw", "code", "match"),
    [
        (b"<html>504</html>", "server_error", "not JSON"),
        (b"\xff", "server_error", "not JSON"),
        (b"[1]", "server_error", "not a chat completion"),
        (b'{"choices": []}', "server_error", "no choices"),
        (b'{"choices": [{"message": {"content": 5}}]}', "server_error", "choices.0"),
        (
            b'{"error": {"code": "insufficient_quota", '
            b'"message": "Free allocated quota exceeded."}}',
            "insufficient_quota",
            "quota",
        ),
        ({"error": "boom"}, "server_error", "boom"),
    ],
)
def test_bad_upstream_answers_are_502(raw: Any, code: str, match: str) -> None:
    with pytest.raises(TranslationError, match=match) as info:
        _translate(raw)
    assert info.value.status == 502
    assert info.value.code == code
    assert info.value.body()["error"]["type"] == "server_error"
