"""One relayed request: what the ``request`` hook hands the relay, and what the
relay reports back to the ``response`` hook (plain data, no mitmproxy).

Also the Responses-shaped error bodies every failure becomes.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from qwen_oauth_mitm.proxy.outbox import Outbox
from qwen_oauth_mitm.translate import StreamTranslator, TranslatedRequest

Kind = Literal["responses", "chat"]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try of one account: its label and what came of it."""

    label: str
    outcome: str
    """An HTTP status (``"429"``), or a word: ``"connect error"``, ``"relogin"``…"""


@dataclass
class Job:
    """A request waiting for (or being served by) the relay."""

    flow_id: str
    kind: Kind
    chat_body: dict[str, Any]
    """The Chat Completions body to send upstream."""
    translated: TranslatedRequest | None
    """For ``responses`` jobs: the translation (the answer is translated back)."""
    conversation_key: str | None
    stream: bool
    attempts: list[Attempt] = field(default_factory=list)
    served_by: str | None = None
    """Label of the account whose answer the client got."""
    status: int | None = None
    """Status the client got."""
    upstream_cut: bool = False
    """The upstream's 200 answer broke off before its end."""
    taken: bool = False
    """The relay has started serving it (each job is served once)."""
    failed: bool = False
    error: str | None = None
    """Why the client got an error (never a token)."""
    refusal: tuple[int, bytes] | None = None
    """Status and body the relay answers at once, upstream untouched: a request
    whose body was streamed (too large, or of unknown length) and is refused."""
    client_body: bytes | bytearray = b""
    """The body as the client sent it: the relay needs none (the job carries it
    parsed), so the flow goes without; it is put back on the flow once answered,
    for mitmweb to show (the same bytes object, not a copy)."""
    outbox: Outbox | None = field(default=None, repr=False)
    """Where the relay task writes the answer (see :mod:`.outbox`)."""
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    """The relay task, started by the ``request`` hook."""
    translator: StreamTranslator | None = field(default=None, repr=False)
    """A streamed ``responses`` job's translator, made (and its opening events
    rendered) while the first upstream request is under way."""

    def cancel(self) -> bool:
        """Stop the relay task if it still runs; whether it did."""
        if self.task is None or self.task.done():
            return False
        self.task.cancel()
        return True

    def comment(self) -> str:
        """The mitmweb comment, e.g. ``qwen · acct work · responses→chat ·
        failover from acct home (429)``."""
        route = "responses→chat" if self.kind == "responses" else "chat"
        parts = ["qwen"]
        if self.served_by:
            parts.append(f"acct {self.served_by}")
        parts.append(route)
        earlier = self.attempts[:-1] if self.served_by else self.attempts
        if earlier:
            tried = ", ".join(f"acct {a.label} ({a.outcome})" for a in earlier)
            if not self.served_by:
                parts.append(f"tried {tried}")
            elif all(a.label == self.served_by for a in earlier):
                parts.append(f"retried after {tried}")  # a 401, then a refresh
            else:
                parts.append(f"failover from {tried}")
        if self.failed and self.error:
            parts.append(f"failed: {self.error[:120]}")
        return " · ".join(parts)


def error_body(
    message: str,
    *,
    code: str | None = None,
    error_type: str = "server_error",
    param: str | None = None,
) -> bytes:
    """``{"error": {message, type, param, code}}`` as compact JSON bytes."""
    body = {
        "error": {"message": message, "type": error_type, "param": param, "code": code}
    }
    return json.dumps(body, separators=(",", ":")).encode()


MODELS_BODY = json.dumps(
    {
        "object": "list",
        "data": [
            {"id": "coder-model", "object": "model", "created": 0, "owned_by": "qwen"}
        ],
    },
    separators=(",", ":"),
).encode()
"""The answer to ``GET /v1/models``."""
