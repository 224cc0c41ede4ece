"""The soak's client: one request through the proxy, and what came of it.

Four kinds of request, chosen per request: a Responses request or a Chat
Completions one, streamed or whole. Each carries ``soak <n>:`` in its prompt, so
the stand-in's record can be matched to it. An answer counts as served only when
it is complete and carries the whole text the stand-in sends.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import httpx

Kind = Literal["responses", "chat"]
Result = Literal["ok", "http_error", "failed_event", "cut", "bad_answer", "exception"]
BASE = "https://portal.qwen.ai/v1"


@dataclass(frozen=True)
class Outcome:
    n: int
    kind: Kind
    stream: bool
    result: Result
    status: int | None
    detail: str = ""
    """The error code or message, the exception's type: why it was not served."""
    seconds: float = 0.0


def body(n: int, kind: Kind, stream: bool) -> dict[str, object]:
    prompt = f"soak {n}: say hello"
    if kind == "responses":
        return {"model": "coder-model", "input": prompt, "stream": stream}
    return {
        "model": "coder-model",
        "messages": [{"role": "user", "content": prompt}],
        "stream": stream,
    }


async def run_one(
    client: httpx.AsyncClient, n: int, kind: Kind, stream: bool, text: str
) -> Outcome:
    """Send request ``n``; never raises (a failure is an :class:`Outcome`)."""
    url = f"{BASE}/{'responses' if kind == 'responses' else 'chat/completions'}"
    status: int | None = None
    try:
        async with client.stream("POST", url, json=body(n, kind, stream)) as r:
            status = r.status_code
            if status != 200:
                raw = await r.aread()
                return Outcome(n, kind, stream, "http_error", status, _code(raw))
            if not stream:
                raw = await r.aread()
                got = _whole_text(kind, raw)
                return _judge(n, kind, stream, got, text)
            if kind == "responses":
                return await _responses_stream(r, n, text)
            return await _chat_stream(r, n, text)
    except httpx.HTTPError as e:
        result: Result = "exception" if status is None else "cut"
        return Outcome(n, kind, stream, result, status, type(e).__name__)


def _judge(n: int, kind: Kind, stream: bool, got: str | None, text: str) -> Outcome:
    if got == text:
        return Outcome(n, kind, stream, "ok", 200)
    return Outcome(n, kind, stream, "bad_answer", 200, f"text {got!r}"[:200])


def _code(raw: bytes) -> str:
    try:
        error = json.loads(raw)["error"]
        return str(error.get("code") or error.get("type") or error.get("message"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return raw[:80].decode("utf-8", "replace")


def _whole_text(kind: Kind, raw: bytes) -> str | None:
    try:
        data = json.loads(raw)
        if kind == "chat":
            return str(data["choices"][0]["message"]["content"])
        parts = [
            c["text"]
            for item in data["output"]
            if item.get("type") == "message"
            for c in item["content"]
            if c.get("type") == "output_text"
        ]
        return "".join(parts) if data.get("status") == "completed" else None
    except (ValueError, KeyError, TypeError, IndexError):
        return None


async def _events(r: httpx.Response) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    out: list[str] = []
    async for line in r.aiter_lines():
        if line.startswith("data:"):
            out.append(line[5:].strip())
    return out


async def _responses_stream(r: httpx.Response, n: int, text: str) -> Outcome:
    deltas: list[str] = []
    last = None
    for data in await _events(r):
        if data == "[DONE]":
            continue
        event = json.loads(data)
        last = event.get("type")
        if last == "response.output_text.delta":
            deltas.append(event["delta"])
        if last == "response.failed":
            error = event["response"].get("error") or {}
            return Outcome(n, "responses", True, "failed_event", 200, str(error))
    if last != "response.completed":
        return Outcome(n, "responses", True, "cut", 200, f"ended after {last}")
    return _judge(n, "responses", True, "".join(deltas), text)


async def _chat_stream(r: httpx.Response, n: int, text: str) -> Outcome:
    deltas: list[str] = []
    done = False
    for data in await _events(r):
        if data == "[DONE]":
            done = True
            continue
        for choice in json.loads(data).get("choices") or []:
            deltas.append(choice.get("delta", {}).get("content") or "")
    if not done:
        return Outcome(n, "chat", True, "cut", 200, "no [DONE]")
    return _judge(n, "chat", True, "".join(deltas), text)
