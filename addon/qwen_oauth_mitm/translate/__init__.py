"""Responses API ⇄ Chat Completions translation (pure: no I/O, no clock, no mitmproxy).

- ``parse_body`` / ``check_chat_request`` — request bytes → JSON, chat checks (400s);
- ``translate_request`` — a ``POST /v1/responses`` body → a chat body (or a 400);
- ``translate_response`` — a ``chat.completion`` → a ``response`` object;
- ``StreamTranslator`` — chat chunks (SSE bytes) → Responses SSE events;
- ``conversation_key`` / ``chat_conversation_key`` — a key for account affinity.
"""

from qwen_oauth_mitm.translate.affinity import chat_conversation_key, conversation_key
from qwen_oauth_mitm.translate.body import MAX_DEPTH, check_chat_request, parse_body
from qwen_oauth_mitm.translate.errors import (
    TranslationError,
    upstream_error_body,
    upstream_error_fields,
)
from qwen_oauth_mitm.translate.ids import IdFactory, counter_ids, random_ids
from qwen_oauth_mitm.translate.request import (
    MAX_OUTPUT_TOKENS,
    TranslatedRequest,
    translate_request,
)
from qwen_oauth_mitm.translate.response import translate_response
from qwen_oauth_mitm.translate.stream import StreamOutcome, StreamTranslator

__all__ = [
    "MAX_DEPTH",
    "MAX_OUTPUT_TOKENS",
    "IdFactory",
    "StreamOutcome",
    "StreamTranslator",
    "TranslatedRequest",
    "TranslationError",
    "chat_conversation_key",
    "check_chat_request",
    "conversation_key",
    "counter_ids",
    "parse_body",
    "random_ids",
    "translate_request",
    "translate_response",
    "upstream_error_body",
    "upstream_error_fields",
]
