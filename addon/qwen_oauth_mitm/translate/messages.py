"""Responses ``instructions`` + ``input`` → Chat Completions ``messages`` (pure).

Rules (design note responses-api.md §7, request table):

- ``instructions`` and the *leading* run of system/developer messages become one
  system message whose single text part carries ``cache_control: ephemeral``, as the
  official Qwen client sends it for prompt caching. It is the only system message:
  Qwen3-family chat templates reject a system message that is not first.
- A later system/developer message (an agent's mid-conversation reminder) is folded
  into a user turn *where it stands*: ``{"role": "user", "content": "[system] …"}``,
  a run of them merged into one such turn (``"[system] a\n\n[system] b"``), empty
  ones dropped. Appending it to the leading system message instead would move a
  reminder about the current step to before the whole history, and change the cached
  prompt prefix on every turn that adds one. The one exception to "where it stands":
  inside a tool exchange (after an assistant's ``tool_calls`` or a ``tool``
  message) it waits until the run of tool messages ends, with the moved images.
- Consecutive ``function_call`` items join the assistant message before them (its text
  becomes ``content``), or open one; ``reasoning`` items become ``reasoning_content`` on
  the next assistant message (dropped if none follows).
- ``function_call_output`` → a ``tool`` message; images and files in an array output
  go to a user message after the run of tool messages, since nothing may come between
  an assistant's ``tool_calls`` and their results.
- Not translatable here, each a 400 naming the field: ``item_reference`` (there is no
  server-side store), hosted-tool call items, ``file_id`` images and files, and files
  other than a PDF data URL (the one file form Qwen's OpenAI-compatible endpoint is
  sent; everything else would be dropped silently upstream).
- ``input_audio`` becomes a placeholder text, since Qwen takes no audio.
"""

from __future__ import annotations

from typing import Any

from qwen_oauth_mitm.translate._check import (
    as_dict,
    as_list,
    as_str,
    fail,
    opt_str,
    unsupported,
)

__all__ = ["AUDIO_PLACEHOLDER", "translate_input", "translate_input_head"]

type Message = dict[str, Any]

AUDIO_PLACEHOLDER = "[audio input omitted: Qwen does not accept audio]"
_TEXT_PARTS = ("input_text", "output_text", "refusal")
_SYSTEM_ROLES = ("system", "developer")
_ROLES = (*_SYSTEM_ROLES, "user", "assistant")
_IMAGE_DETAILS = ("auto", "low", "high", "original")


def translate_input(input_: object, instructions: str | None) -> list[Message]:
    """Build the chat ``messages``; raises TranslationError naming the bad field."""
    return _build(input_, instructions, head_only=False)


def translate_input_head(input_: object, instructions: str | None) -> list[Message]:
    """``translate_input``'s messages up to its first user message, and no further.

    The leading system message and the first user message are final by then, so
    conversation keys (``affinity``) read the same text the upstream gets without
    translating the whole history. Raises TranslationError for a bad item it reads.
    """
    return _build(input_, instructions, head_only=True)


def _build(
    input_: object, instructions: str | None, *, head_only: bool
) -> list[Message]:
    builder = _Builder()
    if instructions:
        builder.system_texts.append(instructions)
    if isinstance(input_, str):
        builder.messages.append({"role": "user", "content": input_})
    else:
        for index, item in enumerate(as_list(input_, "input")):
            builder.add(as_dict(item, f"input[{index}]"), f"input[{index}]")
            if head_only and builder.head_done:
                break
    return builder.result()


class _Builder:
    def __init__(self) -> None:
        self.system_texts: list[str] = []
        self.messages: list[Message] = []
        self._leading = True
        # The last message is an assistant turn that later function_calls may join.
        self._assistant_open = False
        # The last message is a folded system note that a next one may join.
        self._last_was_note = False
        self._has_user = False
        self._reasoning: list[str] = []
        self._tool_media: list[dict[str, Any]] = []
        self._notes: list[str] = []  # folded system notes held past tool messages

    @property
    def head_done(self) -> bool:
        """A user message is in place and no later item can change it."""
        return self._has_user and not self._last_was_note

    def add(self, item: dict[str, Any], param: str) -> None:
        kind = item.get("type", "message")
        # Held media and notes go out where the tool exchange ends: not before
        # another tool result, nor before a call (or its reasoning) joining the open
        # assistant message; a system message decides for itself (``_system``).
        holds = (
            kind == "function_call_output"
            or (self._assistant_open and kind in ("function_call", "reasoning"))
            or (kind in ("message", None) and item.get("role") in _SYSTEM_ROLES)
        )
        if not holds:
            self._flush_held()
        if kind == "message" or (kind is None and "role" in item):
            if self._message(item, param):
                return  # a system message keeps the leading run going
        elif kind == "function_call":
            self._function_call(item, param)
        elif kind == "function_call_output":
            self._function_call_output(item, param)
        elif kind == "reasoning":
            self._reasoning_item(item, param)
        elif kind == "item_reference":
            unsupported(
                "item_reference is not supported: this proxy keeps no stored "
                "responses; send the full conversation with store=false.",
                f"{param}.type",
            )
        elif isinstance(kind, str):
            unsupported(f"Unsupported input item type {kind!r}.", f"{param}.type")
        else:
            as_str(kind, f"{param}.type")
        if kind != "reasoning":
            self._leading = False

    def result(self) -> list[Message]:
        self._flush_held()
        texts = [text for text in self.system_texts if text]
        if not texts:
            return self.messages
        system = {
            "role": "system",
            "content": [
                {
                    "type": "text",
                    "text": "\n\n".join(texts),
                    "cache_control": {"type": "ephemeral"},
                }
            ],
        }
        return [system, *self.messages]

    def _message(self, item: dict[str, Any], param: str) -> bool:
        """Add a role message; True if it was a system/developer message."""
        role = as_str(item.get("role"), f"{param}.role")
        if role not in _ROLES:
            fail(f"Invalid value for '{param}.role': {role!r}.", f"{param}.role")
        content = item.get("content")
        if role in _SYSTEM_ROLES:
            self._system(_text_only(content, f"{param}.content", "\n\n"))
            return True
        if role == "user":
            self._append({"role": "user", "content": _user_content(content, param)})
            return False
        text = _text_only(content, f"{param}.content", "")
        message: Message = {"role": "assistant", "content": text}
        self._take_reasoning(message)
        self._append(message)
        self._assistant_open = True
        return False

    def _system(self, text: str) -> None:
        if self._leading:
            self.system_texts.append(text)
        elif text:
            self._notes.append(f"[system] {text}")
            if not self._in_tool_exchange():
                self._flush_held()

    def _in_tool_exchange(self) -> bool:
        last = self.messages[-1] if self.messages else {}
        return last.get("role") == "tool" or bool(last.get("tool_calls"))

    def _append(self, message: Message) -> None:
        self.messages.append(message)
        self._assistant_open = False
        self._last_was_note = False
        if message["role"] == "user":
            self._has_user = True

    def _function_call(self, item: dict[str, Any], param: str) -> None:
        call = {
            "id": as_str(item.get("call_id"), f"{param}.call_id"),
            "type": "function",
            "function": {
                "name": as_str(item.get("name"), f"{param}.name"),
                "arguments": as_str(item.get("arguments"), f"{param}.arguments"),
            },
        }
        if not self._assistant_open:
            self._append({"role": "assistant", "content": ""})
            self._assistant_open = True
        message = self.messages[-1]
        self._take_reasoning(message)
        message.setdefault("tool_calls", []).append(call)

    def _function_call_output(self, item: dict[str, Any], param: str) -> None:
        call_id = as_str(item.get("call_id"), f"{param}.call_id")
        output = item.get("output")
        if isinstance(output, str):
            text = output
        else:
            texts: list[str] = []
            media: list[dict[str, Any]] = []
            for index, raw in enumerate(as_list(output, f"{param}.output")):
                part_param = f"{param}.output[{index}]"
                part = _user_part(as_dict(raw, part_param), part_param)
                if part["type"] == "text":
                    texts.append(part["text"])
                else:
                    media.append(part)
            if media:
                note = f"[files returned by tool call {call_id}]"
                self._tool_media += [{"type": "text", "text": note}, *media]
            text = "\n".join(texts) or ("(see the next message)" if media else "")
        self._append({"role": "tool", "tool_call_id": call_id, "content": text})

    def _flush_held(self) -> None:
        if self._tool_media:
            self._append({"role": "user", "content": self._tool_media})
            self._tool_media = []
        if self._notes:
            text = "\n\n".join(self._notes)
            self._notes = []
            if self._last_was_note:
                self.messages[-1]["content"] += "\n\n" + text
            else:
                self._append({"role": "user", "content": text})
                self._last_was_note = True

    def _reasoning_item(self, item: dict[str, Any], param: str) -> None:
        # Our own answers put the whole reasoning in `summary`; `content` (raw
        # reasoning text) wins when a client sends it. encrypted_content is opaque.
        opt_str(item.get("encrypted_content"), f"{param}.encrypted_content")
        texts = _part_texts(item.get("content"), f"{param}.content", "reasoning_text")
        if not texts:
            summary = item.get("summary", [])
            texts = _part_texts(summary, f"{param}.summary", "summary_text")
        if texts:
            self._reasoning.append("\n\n".join(texts))

    def _take_reasoning(self, message: Message) -> None:
        if self._reasoning:
            previous = message.get("reasoning_content")
            joined = "\n\n".join(self._reasoning)
            message["reasoning_content"] = (
                f"{previous}\n\n{joined}" if previous else joined
            )
            self._reasoning = []


def _part_texts(parts: object, param: str, part_type: str) -> list[str]:
    if parts is None:
        return []
    texts = []
    for index, raw in enumerate(as_list(parts, param)):
        part = as_dict(raw, f"{param}[{index}]")
        kind = as_str(part.get("type"), f"{param}[{index}].type")
        if kind != part_type:
            unsupported(f"Expected a {part_type!r} part.", f"{param}[{index}].type")
        texts.append(as_str(part.get("text"), f"{param}[{index}].text"))
    return texts


def _text_only(content: object, param: str, joiner: str) -> str:
    """System and assistant content: a string, or text/refusal parts joined."""
    if isinstance(content, str):
        return content
    texts = []
    for index, raw in enumerate(as_list(content, param)):
        part = as_dict(raw, f"{param}[{index}]")
        kind = as_str(part.get("type"), f"{param}[{index}].type")
        if kind not in _TEXT_PARTS:
            unsupported(
                f"Content part type {kind!r} is not allowed here; only text is.",
                f"{param}[{index}].type",
            )
        key = "refusal" if kind == "refusal" else "text"
        texts.append(as_str(part.get(key), f"{param}[{index}].{key}"))
    return joiner.join(texts)


def _user_content(content: object, param: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    parts = [
        _user_part(
            as_dict(raw, f"{param}.content[{index}]"), f"{param}.content[{index}]"
        )
        for index, raw in enumerate(as_list(content, f"{param}.content"))
    ]
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts


def _user_part(part: dict[str, Any], param: str) -> dict[str, Any]:
    kind = as_str(part.get("type"), f"{param}.type")
    if kind in _TEXT_PARTS:
        key = "refusal" if kind == "refusal" else "text"
        return {"type": "text", "text": as_str(part.get(key), f"{param}.{key}")}
    if kind == "input_image":
        return _image_part(part, param)
    if kind == "input_file":
        return _file_part(part, param)
    if kind == "input_audio":
        return {"type": "text", "text": AUDIO_PLACEHOLDER}
    unsupported(f"Unsupported content part type {kind!r}.", f"{param}.type")


def _image_part(part: dict[str, Any], param: str) -> dict[str, Any]:
    url = opt_str(part.get("image_url"), f"{param}.image_url")
    if not url:
        if part.get("file_id") is not None:
            unsupported(
                "Images by file_id are not supported (no Files API upstream); "
                "send image_url as a URL or a data URL.",
                f"{param}.file_id",
            )
        fail(
            "An input_image needs image_url.",
            f"{param}.image_url",
            "missing_required_parameter",
        )
    image: dict[str, Any] = {"url": url}
    detail = opt_str(part.get("detail"), f"{param}.detail")
    if detail is not None:
        if detail not in _IMAGE_DETAILS:
            fail(f"Invalid value for '{param}.detail': {detail!r}.", f"{param}.detail")
        image["detail"] = detail
    return {"type": "image_url", "image_url": image}


def _file_part(part: dict[str, Any], param: str) -> dict[str, Any]:
    for unsupported_key in ("file_id", "file_url"):
        if part.get(unsupported_key) is not None:
            unsupported(
                f"input_file with {unsupported_key} is not supported; "
                "send the PDF inline as file_data (a data URL).",
                f"{param}.{unsupported_key}",
            )
    data = as_str(part.get("file_data"), f"{param}.file_data")
    if not data.startswith("data:application/pdf;base64,"):
        unsupported(
            "Only PDF files are supported, as a data:application/pdf;base64 URL.",
            f"{param}.file_data",
        )
    filename = opt_str(part.get("filename"), f"{param}.filename") or "document.pdf"
    return {"type": "file", "file": {"filename": filename, "file_data": data}}
