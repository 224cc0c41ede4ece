"""Responses input items → chat messages: each row of the request table."""

from __future__ import annotations

from typing import Any

import pytest

from qwen_oauth_mitm.translate import TranslationError, translate_request
from qwen_oauth_mitm.translate.messages import AUDIO_PLACEHOLDER

SYSTEM_CACHE = {"type": "ephemeral"}


def _messages(items: object, instructions: str | None = None) -> list[dict[str, Any]]:
    body: dict[str, Any] = {"model": "m", "input": items}
    if instructions is not None:
        body["instructions"] = instructions
    messages: list[dict[str, Any]] = translate_request(body).chat["messages"]
    return messages


def _user(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": list(parts)}


def _text(text: str) -> dict[str, Any]:
    return {"type": "input_text", "text": text}


def _call(call_id: str, name: str = "read", args: str = "{}") -> dict[str, Any]:
    return {
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": args,
    }


def _system(text: str) -> dict[str, Any]:
    return {
        "role": "system",
        "content": [{"type": "text", "text": text, "cache_control": SYSTEM_CACHE}],
    }


def test_string_input_is_one_user_message() -> None:
    assert _messages("hello") == [{"role": "user", "content": "hello"}]


def test_instructions_and_leading_system_messages_merge() -> None:
    messages = _messages(
        [
            {"role": "developer", "content": "dev"},
            {"type": "message", "role": "system", "content": [_text("a"), _text("b")]},
            {"role": "user", "content": "q"},
        ],
        instructions="inst",
    )
    assert messages == [
        _system("inst\n\ndev\n\na\n\nb"),
        {"role": "user", "content": "q"},
    ]


def test_later_system_messages_fold_into_a_user_turn() -> None:
    # Qwen3 chat templates reject a system message that is not first, so a later
    # run of system/developer messages becomes one user turn, in place.
    messages = _messages(
        [
            {"role": "user", "content": "q"},
            {"role": "system", "content": "s1"},
            {"role": "developer", "content": [_text("s2")]},
            {"role": "user", "content": "q2"},
            {"role": "system", "content": "s3"},
        ],
        instructions="inst",
    )
    assert messages == [
        _system("inst"),
        {"role": "user", "content": "q"},
        {"role": "user", "content": "[system] s1\n\n[system] s2"},
        {"role": "user", "content": "q2"},
        {"role": "user", "content": "[system] s3"},
    ]


def test_empty_later_system_message_is_dropped() -> None:
    messages = _messages(
        [{"role": "user", "content": "q"}, {"role": "system", "content": ""}]
    )
    assert messages == [{"role": "user", "content": "q"}]


def test_system_message_inside_a_tool_exchange_waits_for_the_results() -> None:
    # Nothing may come between an assistant's tool_calls and their tool messages.
    out = {"type": "function_call_output", "call_id": "c1", "output": "r1"}
    out2 = {"type": "function_call_output", "call_id": "c2", "output": "r2"}
    note = {"role": "developer", "content": "remember"}
    messages = _messages(
        [_user(_text("q")), _call("c1"), note, _call("c2"), out, note, out2]
    )
    assert [m["role"] for m in messages] == [
        "user",
        "assistant",
        "tool",
        "tool",
        "user",
    ]
    assert [c["id"] for c in messages[1]["tool_calls"]] == ["c1", "c2"]
    assert messages[4] == {
        "role": "user",
        "content": "[system] remember\n\n[system] remember",
    }


def test_system_message_after_tool_results_comes_before_the_next_turn() -> None:
    messages = _messages(
        [
            _user(_text("q")),
            _call("c1"),
            {"type": "function_call_output", "call_id": "c1", "output": "r"},
            {"role": "system", "content": "reminder"},
            {"role": "assistant", "content": "done"},
        ]
    )
    assert messages[3:] == [
        {"role": "user", "content": "[system] reminder"},
        {"role": "assistant", "content": "done"},
    ]


def test_empty_instructions_give_no_system_message() -> None:
    assert _messages("q", instructions="") == [{"role": "user", "content": "q"}]


def test_user_parts() -> None:
    pdf = "data:application/pdf;base64,JVBERi0="
    (message,) = _messages(
        [
            _user(
                _text("look"),
                {
                    "type": "input_image",
                    "image_url": "https://x/i.png",
                    "detail": "high",
                },
                {"type": "input_image", "image_url": "data:image/png;base64,AA"},
                {"type": "input_file", "filename": "a.pdf", "file_data": pdf},
                {"type": "input_file", "file_data": pdf},
                {"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}},
            )
        ]
    )
    assert message["content"] == [
        {"type": "text", "text": "look"},
        {
            "type": "image_url",
            "image_url": {"url": "https://x/i.png", "detail": "high"},
        },
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": pdf}},
        {"type": "file", "file": {"filename": "document.pdf", "file_data": pdf}},
        {"type": "text", "text": AUDIO_PLACEHOLDER},
    ]


def test_single_text_part_becomes_a_string() -> None:
    assert _messages([_user(_text("only"))]) == [{"role": "user", "content": "only"}]


def test_assistant_text_and_refusal() -> None:
    messages = _messages(
        [
            _user(_text("q")),
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": "a", "annotations": []},
                    {"type": "refusal", "refusal": "b"},
                ],
            },
        ]
    )
    assert messages[1] == {"role": "assistant", "content": "ab"}


def test_function_calls_join_the_preceding_assistant_text() -> None:
    messages = _messages(
        [
            _user(_text("q")),
            {
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Let me"}],
            },
            _call("c1", "read", '{"p":1}'),
            _call("c2", "glob", '{"q":2}'),
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {"type": "function_call_output", "call_id": "c2", "output": "two"},
            _call("c3"),
        ]
    )
    assert messages[1:] == [
        {
            "role": "assistant",
            "content": "Let me",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "read", "arguments": '{"p":1}'},
                },
                {
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "glob", "arguments": '{"q":2}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "c3",
                    "type": "function",
                    "function": {"name": "read", "arguments": "{}"},
                }
            ],
        },
    ]


def test_array_output_moves_images_after_the_tool_messages() -> None:
    image = {"type": "input_image", "image_url": "data:image/png;base64,AA"}
    messages = _messages(
        [
            _user(_text("q")),
            _call("c1"),
            _call("c2"),
            {
                "type": "function_call_output",
                "call_id": "c1",
                "output": [_text("line 1"), image, _text("line 2")],
            },
            {"type": "function_call_output", "call_id": "c2", "output": [image]},
            _user(_text("next")),
        ]
    )
    assert [m["role"] for m in messages] == [
        "user",
        "assistant",
        "tool",
        "tool",
        "user",
        "user",
    ]
    assert messages[2]["content"] == "line 1\nline 2"
    assert messages[3]["content"] == "(see the next message)"
    chat_image = {"type": "image_url", "image_url": {"url": image["image_url"]}}
    assert messages[4]["content"] == [
        {"type": "text", "text": "[files returned by tool call c1]"},
        chat_image,
        {"type": "text", "text": "[files returned by tool call c2]"},
        chat_image,
    ]
    assert messages[5] == {"role": "user", "content": "next"}


def test_reasoning_goes_to_the_next_assistant_message() -> None:
    summary = [{"type": "summary_text", "text": "thought"}]
    messages = _messages(
        [
            _user(_text("q")),
            {
                "type": "reasoning",
                "id": "rs_1",
                "summary": summary,
                "encrypted_content": "x",
            },
            _call("c1"),
            {"type": "function_call_output", "call_id": "c1", "output": "r"},
            {
                "type": "reasoning",
                "summary": summary,
                "content": [{"type": "reasoning_text", "text": "raw"}],
            },
            {"role": "assistant", "content": "done"},
            {"type": "reasoning", "summary": summary},
        ]
    )
    assert messages[1]["reasoning_content"] == "thought"
    assert messages[3] == {
        "role": "assistant",
        "content": "done",
        "reasoning_content": "raw",
    }
    # Trailing reasoning with no assistant message after it is dropped.
    assert len(messages) == 4


def test_reasoning_between_text_and_call_joins_the_same_message() -> None:
    summary = [{"type": "summary_text", "text": "more"}]
    messages = _messages(
        [
            _user(_text("q")),
            {"role": "assistant", "content": "t"},
            {"type": "reasoning", "summary": summary},
            _call("c1"),
        ]
    )
    assert messages[1]["reasoning_content"] == "more"
    assert len(messages[1]["tool_calls"]) == 1


def _bad(items: list[Any]) -> TranslationError:
    with pytest.raises(TranslationError) as info:
        _messages(items)
    return info.value


@pytest.mark.parametrize(
    ("item", "param", "code"),
    [
        ("text", "input[0]", "invalid_type"),
        (
            {"type": "item_reference", "id": "msg_1"},
            "input[0].type",
            "unsupported_value",
        ),
        ({"type": "web_search_call", "id": "ws"}, "input[0].type", "unsupported_value"),
        ({"type": 3}, "input[0].type", "invalid_type"),
        ({"type": None}, "input[0].type", "invalid_type"),
        ({"content": "x"}, "input[0].role", "invalid_type"),
        ({"role": "tool", "content": "x"}, "input[0].role", "invalid_value"),
        ({"role": "user", "content": None}, "input[0].content", "invalid_type"),
        ({"role": "user", "content": [5]}, "input[0].content[0]", "invalid_type"),
        (
            {"role": "user", "content": [{"type": "input_video"}]},
            "input[0].content[0].type",
            "unsupported_value",
        ),
        (
            {"role": "user", "content": [{"type": "input_text", "text": 5}]},
            "input[0].content[0].text",
            "invalid_type",
        ),
        (
            {"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]},
            "input[0].content[0].file_id",
            "unsupported_value",
        ),
        (
            {"role": "user", "content": [{"type": "input_image"}]},
            "input[0].content[0].image_url",
            "missing_required_parameter",
        ),
        (
            {
                "role": "user",
                "content": [
                    {"type": "input_image", "image_url": "u", "detail": "ultra"}
                ],
            },
            "input[0].content[0].detail",
            "invalid_value",
        ),
        (
            {"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]},
            "input[0].content[0].file_id",
            "unsupported_value",
        ),
        (
            {
                "role": "user",
                "content": [{"type": "input_file", "file_url": "https://x"}],
            },
            "input[0].content[0].file_url",
            "unsupported_value",
        ),
        (
            {
                "role": "user",
                "content": [
                    {"type": "input_file", "file_data": "data:text/plain;base64,"}
                ],
            },
            "input[0].content[0].file_data",
            "unsupported_value",
        ),
        (
            {"role": "system", "content": [{"type": "input_image", "image_url": "u"}]},
            "input[0].content[0].type",
            "unsupported_value",
        ),
        (
            {"role": "assistant", "content": [{"type": "refusal"}]},
            "input[0].content[0].refusal",
            "invalid_type",
        ),
        (
            {"type": "function_call", "name": "f", "arguments": "{}"},
            "input[0].call_id",
            None,
        ),
        (
            {"type": "function_call", "call_id": "c", "arguments": "{}"},
            "input[0].name",
            None,
        ),
        (
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": {}},
            "input[0].arguments",
            "invalid_type",
        ),
        ({"type": "function_call_output", "output": "x"}, "input[0].call_id", None),
        ({"type": "function_call_output", "call_id": "c"}, "input[0].output", None),
        (
            {"type": "function_call_output", "call_id": "c", "output": [{"type": "x"}]},
            "input[0].output[0].type",
            "unsupported_value",
        ),
        ({"type": "reasoning", "summary": "s"}, "input[0].summary", "invalid_type"),
        (
            {"type": "reasoning", "summary": [{"type": "reasoning_text", "text": "t"}]},
            "input[0].summary[0].type",
            "unsupported_value",
        ),
        (
            {"type": "reasoning", "summary": [], "encrypted_content": 1},
            "input[0].encrypted_content",
            "invalid_type",
        ),
    ],
)
def test_bad_items_name_the_field(item: Any, param: str, code: str | None) -> None:
    error = _bad([item])
    assert error.param == param
    if code is not None:
        assert error.code == code
    assert error.status == 400


def test_errors_point_at_the_right_item_index() -> None:
    error = _bad([_user(_text("ok")), {"role": "user", "content": [_text("ok"), 5]}])
    assert error.param == "input[1].content[1]"
