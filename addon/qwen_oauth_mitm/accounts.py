"""The accounts file: what we know of each account, as stored on disk.

Pure data and pure edits (each returns a new value). Every account has a stable id,
so rotation state, logs and the CLI never refer to an account by its position in a
list (the reference plugin keyed state by index and lost track when a list shifted).

Tokens are :class:`pydantic.SecretStr`: ``repr``, ``str`` and logging show
``**********``; only :meth:`AccountsFile.to_json` (the file writer) reveals them.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, SecretStr


def _reveal(value: SecretStr) -> str:
    return value.get_secret_value()


Secret = Annotated[
    SecretStr, PlainSerializer(_reveal, return_type=str, when_used="json")
]
"""A token: hidden in repr and str, written in clear only to the 0600 state file."""

AccountKind = Literal["oauth", "key"]


def new_account_id() -> str:
    """A short random id, stable for the account's whole life."""
    return "acct_" + secrets.token_hex(4)


class Account(BaseModel):
    """One Qwen account: an OAuth login or an API key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: Annotated[str, Field(min_length=1)]
    label: Annotated[str, Field(min_length=1)]
    kind: AccountKind
    access_token: Secret | None = None
    """OAuth access token, or the API key of a ``key`` account."""
    refresh_token: Secret | None = None
    expires_at: float | None = None
    """Absolute expiry of the access token, seconds since the epoch (None: never)."""
    resource_url: str | None = None
    """Host the OAuth server said this account's API lives on (e.g. portal.qwen.ai)."""
    base_url: str | None = None
    """API base of a key account, or a per-account override."""
    identity: str | None = None
    """Who the account belongs to (an e-mail or subject) when the server says."""
    disabled: bool = False
    needs_relogin: bool = False
    """The refresh token was refused: only a new login brings the account back."""
    relogin_reason: str | None = None
    added_at: float
    updated_at: float

    def is_expiring(self, now: float, window_seconds: float) -> bool:
        """True when the access token is gone, expired or within the window."""
        if self.access_token is None:
            return True
        return self.expires_at is not None and now >= self.expires_at - window_seconds


class AccountsFile(BaseModel):
    """``qwen-auth-accounts.json``: every account, in the order they were added."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    accounts: tuple[Account, ...] = ()

    def to_json(self) -> bytes:
        """The file's bytes, tokens in clear (for the 0600 file only)."""
        return self.model_dump_json(indent=2).encode() + b"\n"

    def find(self, ref: str) -> Account | None:
        """The account whose id, or else label, is ``ref``."""
        by_id = next((a for a in self.accounts if a.id == ref), None)
        return by_id or next((a for a in self.accounts if a.label == ref), None)

    def get(self, account_id: str) -> Account | None:
        return next((a for a in self.accounts if a.id == account_id), None)

    def put(self, account: Account) -> AccountsFile:
        """Replace the account with the same id, or append it."""
        if self.get(account.id) is None:
            return self.model_copy(update={"accounts": (*self.accounts, account)})
        return self.model_copy(
            update={
                "accounts": tuple(
                    account if a.id == account.id else a for a in self.accounts
                )
            }
        )

    def edit(
        self, account_id: str, change: Callable[[Account], Account]
    ) -> AccountsFile:
        """Apply ``change`` to one account; unchanged when the id is gone."""
        current = self.get(account_id)
        return self if current is None else self.put(change(current))

    def remove(self, account_id: str) -> AccountsFile:
        return self.model_copy(
            update={"accounts": tuple(a for a in self.accounts if a.id != account_id)}
        )

    def same_login(self, candidate: Account) -> Account | None:
        """An existing account that ``candidate`` is a new login of, if we can tell.

        Same identity when the server names one; else the same refresh or access
        token (a re-import of the same credentials).
        """
        for a in self.accounts:
            if a.kind != candidate.kind:
                continue
            if candidate.identity and a.identity == candidate.identity:
                return a
            if _same_secret(a.refresh_token, candidate.refresh_token) or (
                candidate.kind == "key"
                and _same_secret(a.access_token, candidate.access_token)
            ):
                return a
        return None

    def unique_label(self, wanted: str | None) -> str:
        """``wanted`` if free, else the first free ``account-N``/``wanted-N``."""
        taken = {a.label for a in self.accounts}
        if wanted and wanted not in taken:
            return wanted
        stem = wanted or "account"
        n = 1 if wanted else len(self.accounts) + 1
        while f"{stem}-{n}" in taken:
            n += 1
        return f"{stem}-{n}"


def _same_secret(a: SecretStr | None, b: SecretStr | None) -> bool:
    return (
        a is not None
        and b is not None
        and secrets.compare_digest(a.get_secret_value(), b.get_secret_value())
    )
