"""``response_json``: the response object as text, the same bytes as ``json.dumps``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qwen_oauth_mitm.sse import encode_json_event
from qwen_oauth_mitm.translate import translate_request
from qwen_oauth_mitm.translate.output import (
    echo_fields,
    response_json,
    response_object,
)

from .helpers import (
    CASES,
    FIXTURES,
    NOW,
    parse_events,
    request_body,
    translate_chunks,
    upstream,
)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


def _fixture(name: str) -> dict[str, Any]:
    path = FIXTURES / f"opencode-1.18.33-{name}-request.json"
    body: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))["body"]
    return body


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


@given(
    body=st.sampled_from(
        [request_body(), request_body(tools=[], instructions="é\n\u2028"), None]
    ),
    status=st.sampled_from(["in_progress", "completed", "incomplete", "failed"]),
    output=st.lists(st.dictionaries(st.text(max_size=5), JSON, max_size=3)),
    usage=st.none() | st.dictionaries(st.text(max_size=5), JSON, max_size=3),
    error=st.none() | st.dictionaries(st.text(max_size=5), JSON, max_size=3),
    reason=st.none() | st.text(max_size=10),
)
def test_response_json_is_json_dumps_of_the_object(
    body: dict[str, Any] | None,
    status: Any,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    error: dict[str, Any] | None,
    reason: str | None,
) -> None:
    request = translate_request(body or _fixture("main"))
    fields: dict[str, Any] = {
        "response_id": "resp_1",
        "created_at": NOW,
        "status": status,
        "output": output,
        "usage": usage,
        "error": error,
        "incomplete_reason": reason,
    }
    text = response_json(echo_fields(request), **fields)
    assert text == _compact(response_object(request, **fields))


def test_an_empty_echo_leaves_no_stray_comma() -> None:
    text = response_json(
        "", response_id="r", created_at=1, status="completed", output=[], usage=None
    )
    assert json.loads(text)["output"] == []
    assert ",," not in text


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("fixture", [None, "main", "title"])
def test_every_event_is_written_as_json_dumps_writes_it(
    name: str, fixture: str | None
) -> None:
    # The events carrying a response are put together from text; they must be
    # indistinguishable from serializing the parsed event (the order of keys too).
    request = translate_request(_fixture(fixture)) if fixture else None
    out, _ = translate_chunks([upstream(name)], request)
    events = parse_events(out)
    assert len(out) == len(events)
    for raw, event in zip(out, events, strict=True):
        assert raw == encode_json_event(event, event=event["type"])
