"""The official ``openai`` SDK parses what we emit (httpx.MockTransport, no network).

The SDK's own request goes through ``translate_request``; the fixture stream goes
through ``StreamTranslator``; ``client.responses.stream()`` must reach
``get_final_response()`` (or, for incomplete/failed cases, see that terminal event).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import ResponseStreamEvent

from qwen_oauth_mitm.translate import (
    StreamTranslator,
    TranslatedRequest,
    counter_ids,
    translate_request,
    translate_response,
)

from .helpers import CASES, NOW, TOOLS, upstream

_TOOLS: Any = TOOLS


def _mock_http(handle: Any) -> Any:
    # openai 3.x types http_client as its vendored httpx2 but accepts an httpx.Client
    # at run time, which is what the addon's users pass.
    return httpx.Client(transport=httpx.MockTransport(handle))


def _client(answer: Any) -> tuple[openai.OpenAI, list[TranslatedRequest]]:
    seen: list[TranslatedRequest] = []

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/responses"
        translated = translate_request(json.loads(request.content))
        seen.append(translated)
        response: httpx.Response = answer(translated)
        return response

    http = _mock_http(handle)
    client = openai.OpenAI(
        api_key="test",
        base_url="http://portal.invalid/v1",
        http_client=http,
        max_retries=0,
    )
    return client, seen


def _streamed(name: str) -> Any:
    def answer(translated: TranslatedRequest) -> httpx.Response:
        translator = StreamTranslator(translated, now=NOW, ids=counter_ids())

        def body() -> Iterator[bytes]:
            raw = upstream(name)
            for start in range(0, len(raw), 97):  # odd-sized network chunks
                yield from translator.feed(raw[start : start + 97])
            yield from translator.finish()

        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=body()
        )

    return answer


def _usage(usage: Any) -> dict[str, int]:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cached_tokens": usage.input_tokens_details.cached_tokens,
        "reasoning_tokens": usage.output_tokens_details.reasoning_tokens,
        "total_tokens": usage.total_tokens,
    }


@pytest.mark.parametrize("name", sorted(CASES))
def test_responses_stream_helper(name: str) -> None:
    case = CASES[name]
    client, seen = _client(_streamed(name))
    events: list[ResponseStreamEvent] = []
    with client.responses.stream(
        model="coder-model", input="hi", tools=_TOOLS, store=False
    ) as stream:
        events.extend(stream)
        if case["status"] == "completed":
            final = stream.get_final_response()
        else:
            with pytest.raises(RuntimeError, match=r"response\.completed"):
                stream.get_final_response()
            terminal: Any = events[-1]
            final = terminal.response
    assert seen[0].chat["stream"] is True
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.status == case["status"]
    text = "".join(
        part.text
        for item in final.output
        if item.type == "message"
        for part in item.content
        if part.type == "output_text"
    )
    assert text == case["text"]
    calls = [
        {"call_id": item.call_id, "name": item.name, "arguments": item.arguments}
        for item in final.output
        if item.type == "function_call"
    ]
    if case["status"] != "failed":
        assert calls == case["tool_calls"]
    reasoning = "".join(
        s.text
        for item in final.output
        if item.type == "reasoning"
        for s in item.summary
    )
    assert reasoning == case["reasoning"]
    assert final.usage is not None
    assert _usage(final.usage) == case["usage"]
    if case["incomplete_reason"]:
        assert final.incomplete_details is not None
        assert final.incomplete_details.reason == case["incomplete_reason"]
    if case["status"] == "failed":
        errors = [e for e in events if e.type == "error"]
        assert [e.code for e in errors] == [case["error_code"]]
        assert final.error is not None
        assert final.error.code == case["error_code"]


def test_text_deltas_reach_the_helper_events() -> None:
    client, _ = _client(_streamed("multibyte_text"))
    with client.responses.stream(model="coder-model", input="hi") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == CASES["multibyte_text"]["text"]


def test_non_streamed_create() -> None:
    completion = {
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": "Reading.",
                    "reasoning_content": "need the file",
                    "tool_calls": [
                        {
                            "id": "call_9",
                            "type": "function",
                            "function": {"name": "read", "arguments": '{"p":"/a"}'},
                        }
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
    }

    def answer(translated: TranslatedRequest) -> httpx.Response:
        assert "stream" not in translated.chat
        body = translate_response(completion, translated, ids=counter_ids(), now=NOW)
        return httpx.Response(200, json=body)

    client, _ = _client(answer)
    response = client.responses.create(model="coder-model", input="hi", tools=_TOOLS)
    assert response.output_text == "Reading."
    assert response.model == "coder-model"
    calls = [item for item in response.output if item.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [
        ("call_9", "read", '{"p":"/a"}')
    ]
    assert response.usage is not None
    assert response.usage.total_tokens == 16
    assert [t.name for t in response.tools if t.type == "function"] == ["read", "glob"]


def test_sdk_request_errors_come_back_as_400() -> None:
    def answer(translated: TranslatedRequest) -> httpx.Response:
        raise AssertionError("not reached")

    def handle(request: httpx.Request) -> httpx.Response:
        from qwen_oauth_mitm.translate import TranslationError

        try:
            answer(translate_request(json.loads(request.content)))
        except TranslationError as exc:
            return httpx.Response(exc.status, json=exc.body())
        raise AssertionError("expected a TranslationError")

    http = _mock_http(handle)
    client = openai.OpenAI(
        api_key="t", base_url="http://x.invalid/v1", http_client=http, max_retries=0
    )
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(
            model="coder-model", input="hi", tools=[{"type": "web_search"}]
        )
    assert info.value.param == "tools[0].type"
    assert info.value.code == "unsupported_value"
