"""Conversation affinity: send a conversation back to the account that served it.

Pure; no I/O. The upstream caches prompt prefixes per account, so spreading one
conversation over several accounts pays the full prompt every turn. A
conversation is recognised by :func:`conversation_key`: the client's
``prompt_cache_key`` when it sends one (OpenCode sends its session id), else a
hash of the system prompt and the first user message, which stay the same for the
whole conversation. Keys are SHA-256 hashes, so the tracker file never holds a
prompt or the client's own identifiers.

:class:`AffinityMap` remembers the last account per key, least recently used
first, and forgets the oldest beyond ``MAX_AFFINITY_ENTRIES``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from typing import Any

from qwen_oauth_mitm.rotation.state import MAX_AFFINITY_ENTRIES

_SYSTEM_ROLES = frozenset({"system", "developer"})


def conversation_key(body: Mapping[str, Any]) -> str | None:
    """The conversation a request belongs to, or None when it cannot be told.

    Works on a Responses API body (``prompt_cache_key``, ``instructions``,
    ``input``) and on a Chat Completions body (``messages``).
    """
    cache_key = body.get("prompt_cache_key")
    if isinstance(cache_key, str) and cache_key:
        return _digest("prompt_cache_key", cache_key)
    items = body.get("input", body.get("messages"))
    system: list[str] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        system.append(instructions)
    first_user: str | None = None
    if isinstance(items, str):
        first_user = items
    elif isinstance(items, list):
        for item in items:
            if not isinstance(item, Mapping):
                continue
            role = item.get("role")
            if role in _SYSTEM_ROLES:
                system.append(_text(item.get("content")))
            elif role == "user":
                first_user = _text(item.get("content"))
                break
    if first_user is None and not system:
        return None
    return _digest("prompt", "\x00".join(system), first_user or "")


def _text(content: object) -> str:
    """The text of a message: a string, or the text parts of a part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    return ""


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "big"))  # length-prefixed: no ambiguity
        h.update(data)
    return h.hexdigest()[:32]


class AffinityMap:
    """Conversation key -> account id, bounded, least recently used evicted."""

    def __init__(
        self,
        entries: Mapping[str, str] | None = None,
        *,
        limit: int = MAX_AFFINITY_ENTRIES,
    ) -> None:
        self._limit = limit
        # A dict keeps insertion order; re-inserting moves a key to the newest end.
        self._map: dict[str, str] = dict(entries or {})
        self._evict()

    def __len__(self) -> int:
        return len(self._map)

    def get(self, key: str) -> str | None:
        return self._map.get(key)

    def remember(self, key: str, account_id: str) -> None:
        self._map.pop(key, None)
        self._map[key] = account_id
        self._evict()

    def forget_accounts(self, keep: Collection[str]) -> int:
        """Drop entries pointing to accounts not in ``keep``; returns how many."""
        stale = [k for k, v in self._map.items() if v not in keep]
        for k in stale:
            del self._map[k]
        return len(stale)

    def to_dict(self) -> dict[str, str]:
        return dict(self._map)

    def _evict(self) -> None:
        while len(self._map) > self._limit:
            del self._map[next(iter(self._map))]
