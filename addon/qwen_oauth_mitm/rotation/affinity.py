"""Conversation affinity: send a conversation back to the account that served it.

Pure; no I/O. The upstream caches prompt prefixes per account, so spreading one
conversation over several accounts pays the full prompt every turn. The caller
names the conversation (the addon uses
:func:`qwen_oauth_mitm.translate.affinity.conversation_key`: the client's
``prompt_cache_key``, else a hash of the system prompt and first user message);
:class:`AffinityMap` remembers the last account per conversation, least recently
used first, and forgets the oldest beyond ``MAX_AFFINITY_ENTRIES``.

Keys are stored as SHA-256 digests of what the caller gave, so the tracker file
holds neither prompts nor client identifiers, and a huge key costs no space.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping

from qwen_oauth_mitm.rotation.state import MAX_AFFINITY_ENTRIES


def digest(conversation_key: str) -> str:
    """The stored form of a conversation key (32 hex digits)."""
    data = conversation_key.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()[:32]


class AffinityMap:
    """Conversation -> account id, bounded, least recently used evicted."""

    def __init__(
        self,
        entries: Mapping[str, str] | None = None,
        *,
        limit: int = MAX_AFFINITY_ENTRIES,
    ) -> None:
        """``entries`` are stored pairs (digest -> account id), oldest first."""
        self._limit = limit
        # A dict keeps insertion order; re-inserting moves a key to the newest end.
        self._map: dict[str, str] = dict(entries or {})
        self._evict()

    def __len__(self) -> int:
        return len(self._map)

    def get(self, conversation_key: str) -> str | None:
        return self.lookup(digest(conversation_key))

    def remember(self, conversation_key: str, account_id: str) -> None:
        self.store(digest(conversation_key), account_id)

    def lookup(self, digested: str) -> str | None:
        """:meth:`get` for a key already passed through :func:`digest`."""
        return self._map.get(digested)

    def store(self, digested: str, account_id: str) -> None:
        """:meth:`remember` for a key already passed through :func:`digest`."""
        self._map.pop(digested, None)
        self._map[digested] = account_id
        self._evict()

    def forget_accounts(self, keep: Collection[str]) -> int:
        """Drop entries pointing to accounts not in ``keep``; returns how many."""
        stale = [k for k, v in self._map.items() if v not in keep]
        for k in stale:
            del self._map[k]
        return len(stale)

    def to_dict(self) -> dict[str, str]:
        """The stored pairs, oldest first (for :class:`~.state.TrackerState`)."""
        return dict(self._map)

    def _evict(self) -> None:
        while len(self._map) > self._limit:
            del self._map[next(iter(self._map))]
