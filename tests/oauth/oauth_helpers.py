"""Helpers shared by the OAuth tests."""

from __future__ import annotations

import time

from pydantic import SecretStr

from qwen_oauth_mitm.accounts import Account


class FakeClock:
    """Time that moves only when told to; ``sleep`` advances it instantly."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def oauth_account(
    tokens: dict[str, object],
    *,
    label: str,
    expires_at: float,
    account_id: str | None = None,
) -> Account:
    """An OAuth account holding ``tokens`` as issued by the fake server."""
    now = time.time()
    return Account(
        id=account_id or f"acct_{label}",
        label=label,
        kind="oauth",
        access_token=SecretStr(str(tokens["access_token"])),
        refresh_token=SecretStr(str(tokens["refresh_token"])),
        expires_at=expires_at,
        resource_url="portal.qwen.ai",
        added_at=now,
        updated_at=now,
    )
