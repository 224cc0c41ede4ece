"""Output items of a streamed response and the events that open, grow and close them.

Each method returns event payloads (dicts without ``sequence_number``, which the
translator adds); the item keeps what it needs to produce its final form for the
terminal event's ``output``.
"""

from __future__ import annotations

from typing import Any, Literal

from qwen_oauth_mitm.translate.ids import IdFactory
from qwen_oauth_mitm.translate.output import (
    function_call_item,
    message_item,
    output_text_part,
    reasoning_item,
)

__all__ = ["FunctionCall", "TextItem"]

type Event = dict[str, Any]


class TextItem:
    """An assistant message (one ``output_text`` part) or a reasoning item (one
    summary part holding Qwen's ``reasoning_content``)."""

    __slots__ = ("_pieces", "closed", "id", "kind", "output_index")

    def __init__(self, kind: Literal["message", "reasoning"], item_id: str) -> None:
        self.kind = kind
        self.id = item_id
        self.output_index = 0
        self.closed = False
        self._pieces: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self._pieces)

    def item(self) -> dict[str, Any]:
        if self.kind == "reasoning":
            return reasoning_item(self.id, self.text)
        return message_item(
            self.id, self.text, "completed" if self.closed else "in_progress"
        )

    def open_events(self) -> list[Event]:
        where = {"item_id": self.id, "output_index": self.output_index}
        if self.kind == "reasoning":
            added = reasoning_item(self.id, None)
            part: Event = {
                "type": "response.reasoning_summary_part.added",
                **where,
                "summary_index": 0,
                "part": {"type": "summary_text", "text": ""},
            }
        else:
            added = message_item(self.id, "", "in_progress")
            added["content"] = []
            part = {
                "type": "response.content_part.added",
                **where,
                "content_index": 0,
                "part": output_text_part(""),
            }
        item_added = {
            "type": "response.output_item.added",
            "output_index": self.output_index,
            "item": added,
        }
        return [item_added, part]

    def delta_event(self, piece: str) -> Event:
        self._pieces.append(piece)
        if self.kind == "reasoning":
            return {
                "type": "response.reasoning_summary_text.delta",
                "item_id": self.id,
                "output_index": self.output_index,
                "summary_index": 0,
                "delta": piece,
            }
        return {
            "type": "response.output_text.delta",
            "item_id": self.id,
            "output_index": self.output_index,
            "content_index": 0,
            "delta": piece,
            "logprobs": [],
        }

    def close_events(self) -> list[Event]:
        self.closed = True
        text = self.text
        where = {"item_id": self.id, "output_index": self.output_index}
        if self.kind == "reasoning":
            summary = {"type": "summary_text", "text": text}
            first: list[Event] = [
                {
                    "type": "response.reasoning_summary_text.done",
                    **where,
                    "summary_index": 0,
                    "text": text,
                },
                {
                    "type": "response.reasoning_summary_part.done",
                    **where,
                    "summary_index": 0,
                    "part": summary,
                },
            ]
        else:
            first = [
                {
                    "type": "response.output_text.done",
                    **where,
                    "content_index": 0,
                    "text": text,
                    "logprobs": [],
                },
                {
                    "type": "response.content_part.done",
                    **where,
                    "content_index": 0,
                    "part": output_text_part(text),
                },
            ]
        done = {
            "type": "response.output_item.done",
            "output_index": self.output_index,
            "item": self.item(),
        }
        return [*first, done]


class FunctionCall:
    """A tool call, announced once its name is known and closed at finish_reason."""

    __slots__ = (
        "_pieces",
        "_unsent",
        "announced",
        "call_id",
        "closed",
        "id",
        "name",
        "output_index",
        "upstream_id",
    )

    def __init__(self, item_id: str) -> None:
        self.id = item_id
        self.upstream_id: str | None = None
        self.call_id = ""
        self.name = ""
        self.output_index = 0
        self.announced = False
        self.closed = False
        self._pieces: list[str] = []
        self._unsent: list[str] = []

    @property
    def arguments(self) -> str:
        return "".join(self._pieces)

    def add_arguments(self, fragment: str) -> None:
        if not self.closed:
            self._pieces.append(fragment)
            self._unsent.append(fragment)

    def item(self) -> dict[str, Any]:
        status = "completed" if self.closed else "in_progress"
        return function_call_item(
            self.id, self.call_id, self.name, self.arguments, status
        )

    def open_events(self, ids: IdFactory) -> list[Event]:
        self.announced = True
        # call_id is the upstream tool id, which the next request sends back.
        self.call_id = self.upstream_id or ids("call")
        added = function_call_item(self.id, self.call_id, self.name, "", "in_progress")
        return [
            {
                "type": "response.output_item.added",
                "output_index": self.output_index,
                "item": added,
            }
        ]

    def flush_events(self) -> list[Event]:
        """Arguments received but not yet sent, as one delta (none if closed)."""
        if not self._unsent or self.closed or not self.announced:
            return []
        delta = "".join(self._unsent)
        self._unsent = []
        return [
            {
                "type": "response.function_call_arguments.delta",
                "item_id": self.id,
                "output_index": self.output_index,
                "delta": delta,
            }
        ]

    def close_events(self) -> list[Event]:
        self.closed = True
        return [
            {
                "type": "response.function_call_arguments.done",
                "item_id": self.id,
                "output_index": self.output_index,
                "name": self.name,
                "arguments": self.arguments,
            },
            {
                "type": "response.output_item.done",
                "output_index": self.output_index,
                # AI SDK takes the final input from here, not from the deltas.
                "item": self.item(),
            },
        ]
