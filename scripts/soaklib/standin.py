"""The stand-in portal of the soak: random faults, and a record of what it saw.

:class:`SoakStandIn` is the one-port :class:`~qwen_oauth_mitm.portal.StandIn`
(OAuth and chat) that draws a fault for each chat request from a seeded random
generator, and records, for the checks after the run:

- every chat request: the soak request it belongs to (the ``soak <n>:`` tag the
  client puts in its prompt), the account, the status and the fault served;
- every access token it issued (account, time), and every refresh (account, time,
  the new access token);
- every ``401`` fault (account, time, the refused token).
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from qwen_oauth_mitm.oauth.protocol import REFRESH_GRANT_TYPE, TOKEN_PATH
from qwen_oauth_mitm.portal import Fault, StandIn
from qwen_oauth_mitm.portal.chat import _Answer

TAG = re.compile(r"soak (\d+):")


@dataclass(frozen=True)
class FaultMix:
    """Chance of each fault per upstream chat request (the rest are answered)."""

    rate_limit: float = 0.02
    unauthorized: float = 0.02
    server_error: float = 0.02
    drop: float = 0.02
    slow: float = 0.03
    retry_after: float = 1.0
    """Seconds a 429 asks the account to wait."""
    slow_delay: float = 0.02
    """Seconds between the chunks of a slow stream."""

    def draw(self, rng: random.Random) -> Fault | None:
        x = rng.random()
        for chance, fault in (
            (self.rate_limit, Fault("429", retry_after=self.retry_after)),
            (self.unauthorized, Fault("401")),
            (self.server_error, Fault("500")),
            (self.drop, Fault("drop", after_chunks=3)),
            (self.slow, Fault("slow", delay=self.slow_delay)),
        ):
            if x < chance:
                return fault
            x -= chance
        return None


@dataclass(frozen=True)
class Upstream:
    """One chat request the stand-in answered."""

    account: str
    status: int
    fault: str | None
    stream: bool
    at: float


@dataclass(frozen=True)
class Issued:
    account: str
    at: float
    refresh: bool
    """Issued by a refresh (not a login or the seeding)."""


@dataclass
class Record:
    """What the stand-in saw; read once the load has stopped."""

    by_tag: dict[int, list[Upstream]] = field(default_factory=dict)
    untagged: list[Upstream] = field(default_factory=list)
    issued: dict[str, Issued] = field(default_factory=dict)
    """Access token -> who got it and when."""
    refreshes: list[tuple[str, float, str]] = field(default_factory=list)
    """(account, time, new access token), in order."""
    refused: list[tuple[str, float, str]] = field(default_factory=list)
    """401 faults: (account, time, the token refused)."""


class SoakStandIn(StandIn):
    """A :class:`StandIn` with random faults and a :class:`Record`."""

    def __init__(
        self,
        *,
        seed: int,
        mix: FaultMix,
        token_lifetime: float,
        keys: tuple[str, ...] = (),
    ) -> None:
        super().__init__(keys=keys, token_lifetime=token_lifetime, interval=0.05)
        self.mix = mix
        self.record = Record()
        self.faults_on = True
        self._rng = random.Random(seed)
        self._record_lock = threading.Lock()

    def seed_account(self, identity: str) -> dict[str, Any]:
        """Tokens of a new login of ``identity`` (as the device flow gives them)."""
        tokens = self.auth.issue_tokens(identity)
        self._note_tokens(identity, tokens)
        with self._record_lock:
            self.record.issued[str(tokens["access_token"])] = Issued(
                identity, time.time(), refresh=False
            )
        return tokens

    def latest_refresh_token(self, account: str) -> str | None:
        with self._admin_lock:
            issued = self._refresh_of.get(account)
            return issued[-1] if issued else None

    def take_fault(self, token: str) -> Fault | None:
        fault = super().take_fault(token)
        if fault is None and self.faults_on and self.account_of(token) is not None:
            with self._record_lock:
                fault = self.mix.draw(self._rng)
            self._seen.current.fault = fault
        return fault

    def answer(self, token: str, body: Any, headers: dict[str, str]) -> _Answer:
        result = super().answer(token, body, headers)
        fault = self._seen.current.fault
        stream = bool(isinstance(body, dict) and body.get("stream"))
        seen = Upstream(
            self.account_of(token) or "?",
            result.status,
            fault.kind if fault else None,
            stream,
            time.time(),
        )
        messages = body.get("messages") if isinstance(body, dict) else None
        tag = TAG.search(json.dumps(messages, ensure_ascii=False))
        with self._record_lock:
            if tag:
                self.record.by_tag.setdefault(int(tag[1]), []).append(seen)
            else:
                self.record.untagged.append(seen)
            if fault is not None and fault.kind == "401":
                self.record.refused.append((seen.account, seen.at, token))
        return result

    def _oauth(self, path: str, raw: bytes, headers: dict[str, str]) -> _Answer:
        answer = super()._oauth(path, raw, headers)
        if path == TOKEN_PATH and answer.status == 200:
            tokens = json.loads(answer.body)
            access = str(tokens["access_token"])
            account = self.account_of(access) or "?"
            form = dict(parse_qsl(raw.decode("utf-8", "replace")))
            refresh = form.get("grant_type") == REFRESH_GRANT_TYPE
            now = time.time()
            with self._record_lock:
                self.record.issued[access] = Issued(account, now, refresh=refresh)
                if refresh:
                    self.record.refreshes.append((account, now, access))
        return answer
