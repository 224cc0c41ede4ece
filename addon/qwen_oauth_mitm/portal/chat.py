"""A fake Qwen chat endpoint on 127.0.0.1: ``POST .../chat/completions``.

Answers like the portal: a ``chat.completion`` or an SSE stream of
``chat.completion.chunk`` events ending with a usage chunk and ``[DONE]``. The
reply is text (``text``), an image remark when the last user message holds an
image, or a tool call of the first tool when tools are offered and the last
message is not a tool result; with ``enable_thinking`` it is preceded by
``reasoning_content``. JSON goes out as raw UTF-8 (multi-byte text unescaped), as
the portal sends it.

Scripted replies: :meth:`FakePortal.reply_with` queues replies (``ToolCall(name,
arguments)``, ``Text(text)``) in one queue for all tokens (rotation decides which
account makes a request), each used once, in order, by the next request that offers
tools and whose last message is not a tool result (and that is answered, not
faulted). Other requests, and all of them once the queue is empty, get the usual
reply above.

Tokens: ``Authorization: Bearer <t>`` is accepted when ``t`` is one of ``keys`` or a
live access token of the linked :class:`FakeQwenOAuth`; otherwise a 401 in the
portal's shape. Faults are queued per token with :meth:`FakePortal.script` and used
one per request, in order:

- ``Fault("429", retry_after=2)``: throttled (``Retry-After`` header if given);
- ``Fault("quota")``: 429 ``insufficient_quota``;
- ``Fault("401")``: ``invalid_api_key``, even for a good token;
- ``Fault("500")``: a server error;
- ``Fault("drop", after_chunks=2)``: a stream cut (connection closed) mid-way;
- ``Fault("slow", delay=0.3)``: a stream with pauses between chunks;
- ``Fault("hang", delay=5)``: the usual answer, after ``delay`` seconds of silence
  before its headers;
- ``Fault("504")``: a gateway's HTML error page (``text/html``), as the portal's
  front end sends under long contexts;
- ``Fault("bad_json")``: a 200 ``application/json`` whose body is cut JSON (streamed
  request or not);
- ``Fault("bad_sse", after_chunks=0)``: a 200 event stream whose event after
  ``after_chunks`` good ones has data that is not JSON (the rest follows);
- ``Fault("error_200", code="insufficient_quota")``: a 200 carrying an error object
  (the whole body, or a stream's first event); ``code`` picks the error (a quota,
  ``Throttling``, or anything else: a server error);
- ``Fault("html_200")``: a 200 ``text/html`` page (a login or WAF page in the way).

Readable: ``requests`` (every request: token, status, body, headers),
:meth:`statuses`, and ``hangups`` (answers the client closed the connection on
before they were all written, e.g. a stream the proxy stopped reading). Runs in a
background thread; use as a context manager.

A subclass may serve more paths (:meth:`FakePortal.route`), choose faults
(:meth:`FakePortal.take_fault`) and count tokens (:meth:`FakePortal.usage`): the
one-command stand-in (:mod:`.standin`) does.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal

from qwen_oauth_mitm.localserver import LocalServer
from qwen_oauth_mitm.oauth.fake_server import DropConnection, FakeQwenOAuth

FaultKind = Literal[
    "429",
    "quota",
    "401",
    "500",
    "drop",
    "slow",
    "hang",
    "504",
    "bad_json",
    "bad_sse",
    "error_200",
    "html_200",
]


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    retry_after: float | None = None
    after_chunks: int = 2
    delay: float = 0.3
    code: str = "InternalError"
    """The error code of an ``error_200`` fault."""


@dataclass(frozen=True)
class ToolCall:
    """A scripted reply: a call of the tool ``name`` with ``arguments``."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    id: str = "call_fake_1"


@dataclass(frozen=True)
class Text:
    """A scripted reply: ``text``, even though tools are offered."""

    text: str


Reply = ToolCall | Text


@dataclass(frozen=True)
class PortalRequest:
    token: str
    status: int
    body: Mapping[str, Any]
    headers: Mapping[str, str]


@dataclass
class _Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    stream: list[bytes] | None = None
    delay: float = 0.0
    drop_after: int | None = None
    head_delay: float = 0.0
    """Seconds of silence before the status line (the ``hang`` fault)."""


class FakePortal(LocalServer):
    """A stand-in Qwen chat API; see the module docstring."""

    def __init__(
        self,
        oauth: FakeQwenOAuth | None = None,
        *,
        keys: Iterable[str] = (),
        text: str = "Hello from the fake Qwen portal.",
        chunk_delay: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.oauth = oauth
        self.keys = set(keys)
        self.text = text
        self.chunk_delay = chunk_delay
        self.requests: list[PortalRequest] = []
        self.hangups = 0
        self._faults: dict[str, list[Fault]] = {}
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        super().__init__(
            _make_handler(self), host=host, port=port, name="fake-qwen-portal"
        )

    @property
    def url(self) -> str:
        """The API base, ``http://127.0.0.1:PORT/v1``."""
        return f"{self.base_url}/v1"

    # --- control and reading ----------------------------------------------------

    def script(self, token: str, *faults: Fault) -> None:
        """Queue faults for the next requests made with ``token``."""
        with self._lock:
            self._faults.setdefault(token, []).extend(faults)

    def reply_with(self, *replies: Reply) -> None:
        """Queue replies for the next requests that offer tools and do not end with
        a tool result, whichever token they carry (see the module docstring)."""
        for reply in replies:
            if not isinstance(reply, ToolCall | Text):
                raise TypeError(f"not a ToolCall or Text: {reply!r}")
        with self._lock:
            self._replies.extend(replies)

    def pending_replies(self) -> list[Reply]:
        """The scripted replies not used yet."""
        with self._lock:
            return list(self._replies)

    def clear_replies(self) -> None:
        with self._lock:
            self._replies.clear()

    def take_reply(self, body: dict[str, Any]) -> Reply | None:
        """The scripted reply for ``body``, if it takes one and one is queued."""
        if not _wants_tool_call(body):
            return None
        with self._lock:
            return self._replies.popleft() if self._replies else None

    def statuses(self, token: str | None = None) -> list[int]:
        with self._lock:
            return [r.status for r in self.requests if token in (None, r.token)]

    # --- answering --------------------------------------------------------------

    def route(
        self, method: str, path: str, headers: dict[str, str], raw: bytes
    ) -> _Answer:
        """The answer to a request (``headers`` lower-cased; ``path`` no query)."""
        if method != "POST" or not path.endswith("/chat/completions"):
            return _error(404, "not_found", f"no endpoint {method} {path}")
        token = headers.get("authorization", "").removeprefix("Bearer ").strip()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        return self.answer(token, body, headers)

    def take_fault(self, token: str) -> Fault | None:
        """The fault for this request, if one is queued (taken off the queue)."""
        with self._lock:
            queue = self._faults.get(token)
            return queue.pop(0) if queue else None

    def usage(self, token: str, body: dict[str, Any]) -> dict[str, Any]:  # noqa: ARG002
        """The ``usage`` of an answer to ``body`` (here always the same)."""
        return dict(_USAGE)

    def answer(self, token: str, body: Any, headers: dict[str, str]) -> _Answer:
        fault = self.take_fault(token)
        result = self._answer(token, body, fault)
        if fault is not None and fault.kind == "hang":
            result.head_delay = fault.delay
        with self._lock:
            self.requests.append(
                PortalRequest(
                    token,
                    result.status,
                    body if isinstance(body, dict) else {},
                    headers,
                )
            )
        return result

    def _answer(self, token: str, body: Any, fault: Fault | None) -> _Answer:
        kind = fault.kind if fault else None
        if kind == "401" or not self._valid(token):
            return _error(
                401, "invalid_api_key", "invalid access token or token expired"
            )
        if kind == "429":
            answer = _error(429, "Throttling", "Requests throttling triggered.")
            if fault and fault.retry_after is not None:
                answer.headers["Retry-After"] = f"{fault.retry_after:g}"
            return answer
        if kind == "quota":
            return _error(429, "insufficient_quota", "Free allocated quota exceeded.")
        if kind == "500":
            return _error(500, "InternalError", "Internal server error.")
        stream = isinstance(body, dict) and bool(body.get("stream"))
        if fault is not None and (garbage := _garbage(fault, stream=stream)):
            return garbage
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "invalid_request_error", "messages is required")
        message, finish = _reply(body, self.text, self.take_reply(body))
        model = str(body.get("model") or "coder-model")
        usage = self.usage(token, body)
        if not body.get("stream"):
            return _Answer(
                200,
                _dumps(_completion(model, message, finish, usage)),
                {"Content-Type": "application/json"},
            )
        delay = fault.delay if fault and kind == "slow" else self.chunk_delay
        chunks = _chunks(model, message, finish, usage)
        if fault and kind == "bad_sse":
            chunks.insert(fault.after_chunks, b"data: <b>not json</b>\n\n")
        return _Answer(
            200,
            headers={"Content-Type": "text/event-stream"},
            stream=chunks,
            delay=delay,
            drop_after=fault.after_chunks if fault and kind == "drop" else None,
        )

    def _valid(self, token: str) -> bool:
        if token in self.keys:
            return True
        return self.oauth is not None and self.oauth.is_valid_access_token(token)


def _dumps(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode()


def _error(status: int, code: str, message: str) -> _Answer:
    body = {"error": {"code": code, "type": code, "message": message}}
    return _Answer(status, _dumps(body), {"Content-Type": "application/json"})


GATEWAY_PAGE = (
    b"<html><head><title>504 Gateway Time-out</title></head><body><center>"
    b"<h1>504 Gateway Time-out</h1></center><hr><center>nginx</center></body></html>"
)
_ERROR_MESSAGES = {
    "insufficient_quota": "Free allocated quota exceeded.",
    "Throttling": "Requests throttling triggered.",
}


def _garbage(fault: Fault, *, stream: bool) -> _Answer | None:
    """The answer of a fault that is no proper answer (None: not such a fault)."""
    html = {"Content-Type": "text/html; charset=utf-8"}
    match fault.kind:
        case "504":
            return _Answer(504, GATEWAY_PAGE, html)
        case "html_200":
            return _Answer(200, b"<html><body>Please log in.</body></html>", html)
        case "bad_json":
            body = b'{"id": "chatcmpl-fake", "choices": [{"index": 0, "mess'
            return _Answer(200, body, {"Content-Type": "application/json"})
        case "error_200":
            message = _ERROR_MESSAGES.get(fault.code, "Internal server error.")
            error = {"error": {"code": fault.code, "message": message}}
            if not stream:
                return _Answer(200, _dumps(error), {"Content-Type": "application/json"})
            events = [b"data: " + _dumps(error) + b"\n\n", b"data: [DONE]\n\n"]
            return _Answer(
                200, headers={"Content-Type": "text/event-stream"}, stream=events
            )
    return None


_REASONING = "The user wants a short answer; I will keep it brief."


def _wants_tool_call(body: dict[str, Any]) -> bool:
    """Whether ``body`` offers tools and its last message is not a tool result."""
    messages = body.get("messages") or [{}]
    last = messages[-1] if isinstance(messages[-1], dict) else {}
    return bool(body.get("tools")) and last.get("role") != "tool"


def _reply(
    body: dict[str, Any], text: str, scripted: Reply | None = None
) -> tuple[dict[str, Any], str]:
    if isinstance(scripted, ToolCall):
        message, finish = _tool_call(scripted), "tool_calls"
    elif isinstance(scripted, Text):
        message, finish = {"role": "assistant", "content": scripted.text}, "stop"
    else:
        message, finish = _plain_reply(body, text)
    if body.get("enable_thinking"):
        message = {"role": "assistant", "reasoning_content": _REASONING} | message
    return message, finish


def _plain_reply(body: dict[str, Any], text: str) -> tuple[dict[str, Any], str]:
    messages = body["messages"]
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    if _wants_tool_call(body):
        tools = body["tools"]
        first = tools[0] if isinstance(tools, list) and tools else {}
        function = first.get("function") if isinstance(first, dict) else None
        name = function.get("name", "tool") if isinstance(function, dict) else "tool"
        return _tool_call(ToolCall(str(name), {"city": "Paris"})), "tool_calls"
    content = last.get("content")
    if isinstance(content, list) and any(
        isinstance(p, dict) and p.get("type") == "image_url" for p in content
    ):
        text = "I see an image."
    elif last.get("role") == "tool":
        text = f"The tool said: {last.get('content')}"
    return {"role": "assistant", "content": text}, "stop"


def _tool_call(call: ToolCall) -> dict[str, Any]:
    arguments = json.dumps(
        dict(call.arguments), ensure_ascii=False, separators=(",", ":")
    )
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": arguments},
            }
        ],
    }


_USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


def _completion(
    model: str, message: dict[str, Any], finish: str, usage: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage,
    }


def _chunks(
    model: str, message: dict[str, Any], finish: str, usage: dict[str, Any]
) -> list[bytes]:
    def chunk(delta: dict[str, Any], reason: str | None = None, **extra: Any) -> bytes:
        payload = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
            **extra,
        }
        return b"data: " + _dumps(payload) + b"\n\n"

    out = [chunk({"role": "assistant", "content": ""})]
    if message.get("reasoning_content"):
        words = str(message["reasoning_content"]).split(" ")
        out += [
            chunk({"reasoning_content": w if i == 0 else " " + w})
            for i, w in enumerate(words)
        ]
    if message.get("tool_calls"):
        call = message["tool_calls"][0]
        out.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": call["id"],
                            "type": "function",
                            "function": {
                                "name": call["function"]["name"],
                                "arguments": "",
                            },
                        }
                    ]
                }
            )
        )
        out.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "function": {"arguments": call["function"]["arguments"]},
                        }
                    ]
                }
            )
        )
    else:
        words = str(message["content"]).split(" ")
        out += [
            chunk({"content": w if i == 0 else " " + w}) for i, w in enumerate(words)
        ]
    out.append(chunk({}, finish))
    last = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [],
        "usage": usage,
    }
    out.append(b"data: " + _dumps(last) + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return out


def _make_handler(portal: FakePortal) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "FakeQwenPortal/1"
        # TCP_NODELAY, like a real server: with Nagle on, a stream's first chunk
        # (a small write right after the headers) waits for the client's delayed
        # ACK, about 40 ms on a kept-alive connection.
        disable_nagle_algorithm = True

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            path = self.path.split("?", 1)[0]
            try:
                self._send(portal.route(self.command, path, headers, raw))
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up (a timeout)
                with portal._lock:
                    portal.hangups += 1
            except DropConnection:
                self.close_connection = True  # an OAuth fault: no answer at all

        do_GET = do_POST
        do_DELETE = do_POST

        def _send(self, answer: _Answer) -> None:
            if answer.head_delay:
                time.sleep(answer.head_delay)
            self.send_response(answer.status, HTTPStatus(answer.status).phrase)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            if answer.stream is None:
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)
                return
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i, piece in enumerate(answer.stream):
                if answer.drop_after is not None and i >= answer.drop_after:
                    self.close_connection = True
                    return  # no last chunk: the client sees a cut body
                if i and answer.delay:
                    time.sleep(answer.delay)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
