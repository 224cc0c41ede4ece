"""Token lifecycle: hand out a valid access token, refreshing it when due.

One :class:`TokenManager` per process (the addon's, or the CLI's). Rules:

- ``expires_at`` is absolute; a token within ``refresh_window_seconds`` of it is
  *expiring* and is refreshed before use.
- **Single-flight in the process**: concurrent demands for one account share one
  refresh task (50 callers -> one HTTP refresh). The task is shielded and kept
  referenced, so a caller that gives up does not cancel the refresh: it finishes
  in the background and saves what it got, and a later caller joins it rather
  than starting another.
- **A caller waits a bounded time** (``wait``, the proxy's
  ``timeouts.refresh_seconds``), then gets :class:`RefreshFailed` (or its token,
  if that still works); the HTTP refresh itself may take far longer
  (:data:`REFRESH_HTTP_SECONDS`): cutting it short after the server rotated the
  refresh token would lose the new one, and the next refresh, sent with the
  retired one, would kill the login.
- **Guarded across processes**: the refresh runs holding the accounts file's lock
  (``<file>.lock``, taken without blocking the event loop) and re-reads the file
  after taking it; when another process has refreshed meanwhile, its token is used
  and no request is made. (Two refreshes of one refresh token can kill it.)
- The new tokens, including a rotated refresh token, are written to the file
  before the new access token is handed to anyone. When that write fails (disk
  full, a file another process broke), the server has already retired the old
  refresh token, so the new tokens are the truth: they are kept in memory
  (*unsaved*) and used, an error is logged once, and every later demand first
  retries saving them. The retired refresh token is never sent again; a refresh
  needed meanwhile uses the unsaved one.
- Concurrent callers share one refresh, but each decides for itself what its
  outcome means: a caller whose token was refused (401) never gets that token
  back, and a caller whose token still works is not failed by someone else's
  forced refresh that failed. A forced refresh that finds one in flight joins
  it, and starts its own only if that one did not refresh: two HTTP refreshes
  back to back would buy nothing.
- **Shutdown waits for refreshes in flight** (:meth:`TokenManager.settle`, a
  bounded wait): one cut short after the server rotated the refresh token would
  lose the new one.
- A refresh answered 400/401 marks the account ``needs_relogin`` (with the reason),
  logs the account and the command to run, and raises :class:`NeedsRelogin`; other
  accounts are untouched. Network errors, timeouts and 5xx are transient: nothing
  is marked; a still-valid token keeps being used, and the refresh is retried after
  a short back-off.

Refreshes of different accounts in one process run one at a time: each holds the
file lock while waiting for the server, as Qwen Code does (refreshes are rare).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

import filelock
from pydantic import SecretStr

from qwen_oauth_mitm import redact
from qwen_oauth_mitm.accounts import Account, AccountsFile
from qwen_oauth_mitm.errors import AuthError, QwenError, StoreError
from qwen_oauth_mitm.oauth.client import OAuthClient
from qwen_oauth_mitm.oauth.errors import (
    NeedsRelogin,
    TransientAuthError,
    relogin_command,
)
from qwen_oauth_mitm.oauth.protocol import TokenSet
from qwen_oauth_mitm.store import (
    LOCK_FILE_MODE,
    JsonStateFile,
    atomic_write,
    ensure_private_dir,
)
from qwen_oauth_mitm.tasks import spawn

log = logging.getLogger(__name__)

Clock = Callable[[], float]

DEFAULT_TRANSIENT_BACKOFF = 30.0
"""Seconds before a failed (transient) refresh is tried again while the token works."""

REFRESH_HTTP_SECONDS = 60.0
"""The least timeout of the refresh's own HTTP exchange in the proxy. No request
waits that long (callers give up after ``wait``); it only bounds how long a hung
OAuth server keeps the account's refresh, and the file lock, busy."""


def refresh_http_seconds(refresh_seconds: float) -> float:
    """The HTTP timeout of a refresh, for a config's ``timeouts.refresh_seconds``.

    Never shorter than :data:`REFRESH_HTTP_SECONDS`, in the proxy and in the CLI
    alike: the refresh a short timeout cuts off may already have rotated the
    refresh token at the server.
    """
    return max(refresh_seconds, REFRESH_HTTP_SECONDS)


def refresh_lock_seconds(refresh_seconds: float) -> float:
    """How long to wait for the accounts file's lock: long enough to outwait
    another process's refresh, which holds it for up to its HTTP timeout."""
    return refresh_http_seconds(refresh_seconds) + 10.0


class UnknownAccount(QwenError):
    """No account has this id (it was removed)."""


class RefreshFailed(TransientAuthError):
    """A shared refresh failed transiently, or was still running when the caller's
    wait ran out (it goes on in the background).

    Each waiting caller gets its own instance naming the one refresh attempt, so
    the failure can be counted once per attempt, not once per waiting request.
    """

    def __init__(self, message: str, flight: _Flight) -> None:
        super().__init__(message)
        self._flight = flight

    def first_report(self) -> bool:
        """True for the first caller to report this attempt's failure."""
        first = not self._flight.failure_reported
        self._flight.failure_reported = True
        return first


def register_secrets(accounts: AccountsFile) -> None:
    """Register every token in ``accounts`` with the redaction registry."""
    for a in accounts.accounts:
        redact.register(a.access_token, a.refresh_token)


def apply_tokens(account: Account, tokens: TokenSet, now: float) -> Account:
    """``account`` with the new tokens; the old refresh token is kept if none came."""
    return account.model_copy(
        update={
            "access_token": SecretStr(tokens.access_token),
            "refresh_token": SecretStr(tokens.refresh_token)
            if tokens.refresh_token
            else account.refresh_token,
            "expires_at": tokens.expires_at(now),
            "resource_url": tokens.resource_url or account.resource_url,
            "identity": tokens.identity or account.identity,
            "needs_relogin": False,
            "relogin_reason": None,
            "updated_at": now,
        }
    )


def mark_needs_relogin(account: Account, reason: str, now: float) -> Account:
    return account.model_copy(
        update={"needs_relogin": True, "relogin_reason": reason, "updated_at": now}
    )


@dataclass(frozen=True)
class _Unsaved:
    """Tokens a refresh returned that could not be written to the file yet."""

    tokens: TokenSet
    received_at: float
    based_on: str | None
    """The refresh token they replaced (retired by the server when it rotated)."""

    def apply(self, account: Account) -> Account | None:
        """``account`` with these tokens; None when the file moved on without us
        (another login replaced the refresh token these were based on)."""
        if not _same(_secret(account, "refresh_token"), self.based_on):
            return None
        return apply_tokens(account, self.tokens, self.received_at)


@dataclass(frozen=True)
class _Outcome:
    """What a shared refresh task ended with; each waiter judges it for itself."""

    account: Account | None
    """The account afterwards: refreshed, or the current one when ``error``."""
    error: QwenError | None = None
    """The transient failure of the refresh, if it failed."""
    refreshed: bool = False
    """True when this task got new tokens from the server."""


@dataclass(eq=False)
class _Flight:
    """One refresh attempt in flight, shared by every caller that waits for it."""

    task: asyncio.Task[_Outcome]
    failure_reported: bool = False


MAX_JOINS = 3
"""Shared refreshes a caller waits for before giving up (see :meth:`_ensure`)."""


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and secrets.compare_digest(a, b)


def _secret(account: Account, field: str) -> str | None:
    value = getattr(account, field)
    return None if value is None else str(value.get_secret_value())


class TokenManager:
    """Fresh access tokens for the accounts in one accounts file."""

    def __init__(
        self,
        store: JsonStateFile[AccountsFile],
        client: OAuthClient,
        *,
        refresh_window_seconds: float = 300.0,
        clock: Clock = time.time,
        lock_timeout: float = 60.0,
        transient_backoff: float = DEFAULT_TRANSIENT_BACKOFF,
    ) -> None:
        self.store = store
        self.client = client
        self.refresh_window_seconds = refresh_window_seconds
        self.clock = clock
        self.transient_backoff = transient_backoff
        self._lock_path = str(store.path) + ".lock"
        self._lock_timeout = lock_timeout
        self._cache: AccountsFile | None = None
        self._signature: tuple[int, ...] | None = None
        self.seen_signature: tuple[int, ...] | None = None
        """The accounts file's signature at the last :meth:`accounts` (None: no
        file), whether or not that call had to read it: callers that must notice
        a change of the file compare it, instead of looking at the file again."""
        self._inflight: dict[str, _Flight] = {}
        self._unsaved: dict[str, _Unsaved] = {}
        self._mutex: asyncio.Lock | None = None
        self._retry_after: dict[str, float] = {}
        self.refreshes = 0
        """HTTP refreshes this manager made (for tests and status)."""

    # --- reading ----------------------------------------------------------------

    async def accounts(self) -> AccountsFile:
        """The accounts, re-read only when the file changed since the last read.

        Tokens that could not be saved yet replace the file's (they are newer).
        """
        signature = self.seen_signature = self.store.signature()
        if self._cache is None or signature != self._signature:
            try:
                self._remember(await asyncio.to_thread(self.store.read), signature)
            except StoreError:
                if self._cache is None or not self._unsaved:
                    raise
                # Unreadable now, but we hold tokens newer than the file anyway.
        assert self._cache is not None
        return self._with_unsaved(self._cache)

    def _with_unsaved(self, accounts: AccountsFile) -> AccountsFile:
        for account_id, unsaved in list(self._unsaved.items()):
            current = accounts.get(account_id)
            newer = None if current is None else unsaved.apply(current)
            if newer is None:
                log.warning(
                    "dropping the unsaved tokens of account %s: the accounts file "
                    "has another login for it now",
                    current.label if current else account_id,
                )
                del self._unsaved[account_id]
            else:
                accounts = accounts.put(newer)
        return accounts

    def _current(self, account_id: str) -> Account | None:
        """The last known state of the account (unsaved tokens included)."""
        if self._cache is None:
            return None
        return self._with_unsaved(self._cache).get(account_id)

    def _remember(
        self, accounts: AccountsFile, signature: tuple[int, ...] | None = None
    ) -> None:
        register_secrets(accounts)
        self._cache = accounts
        self._signature = self.store.signature() if signature is None else signature

    async def account(self, account_id: str) -> Account:
        found = (await self.accounts()).get(account_id)
        if found is None:
            raise UnknownAccount(f"no account with id {account_id!r}")
        return found

    # --- the public operations --------------------------------------------------

    async def access_token(
        self,
        account_id: str,
        *,
        wait: float | None = None,
        known: Account | None = None,
    ) -> str:
        """A usable access token (or API key) for the account.

        ``wait``: seconds to wait for a refresh before :class:`RefreshFailed` (the
        refresh goes on and saves its result); None: until the refresh ends.
        ``known``: the account as :meth:`accounts` returned it to the caller in
        this same turn of the event loop (the forwarder's pick, a moment ago):
        taken as it is instead of looking at the file again, a file check per
        request less. Only that first look: after a wait the account is read anew.
        """
        account = await self._ensure(
            account_id, force=False, rejected=None, wait=wait, known=known
        )
        token = _secret(account, "access_token")
        if token is None:  # only a broken file gets here
            raise AuthError(f"account {account.label!r} has no access token")
        return token

    async def ensure_fresh(self, account_id: str, *, force: bool = False) -> Account:
        """The account with a token that is not expiring; refreshes when needed.

        ``force`` refreshes even a fresh token (the ``refresh`` command). Raises
        :class:`NeedsRelogin` for an account whose refresh token is dead.
        """
        return await self._ensure(account_id, force=force, rejected=None, wait=None)

    async def after_unauthorized(
        self, account_id: str, rejected_token: str, *, wait: float | None = None
    ) -> Account:
        """The upstream refused ``rejected_token`` (401): refresh, unless done already.

        Many requests failing with the same token cause a single refresh; one that
        arrives after the token was renewed gets the new token without a refresh.
        """
        return await self._ensure(
            account_id, force=False, rejected=rejected_token, wait=wait
        )

    async def refresh(self, account_id: str) -> Account:
        """Refresh now (for the ``refresh`` command)."""
        return await self.ensure_fresh(account_id, force=True)

    async def settle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the refreshes in flight to end.

        For shutdown, before the OAuth client closes: a refresh cut short after
        the server rotated the refresh token loses the new one, and the login
        with it. Refreshes still running after ``timeout`` are left alone (and
        logged). True when none is left running.
        """
        flights = {f.task: account_id for account_id, f in self._inflight.items()}
        if not flights:
            return True
        log.info("waiting up to %g s for %d token refresh(es)", timeout, len(flights))
        _, pending = await asyncio.wait(flights, timeout=timeout)
        for task in pending:
            account = self._current(flights[task])
            label = account.label if account else flights[task]
            log.warning(
                "the token refresh of account %s still runs after %g s and is cut "
                "short; if the OAuth server retired its refresh token meanwhile, "
                "the next refresh will ask for a new login (%s)",
                label,
                timeout,
                relogin_command(label),
            )
        return not pending

    # --- machinery --------------------------------------------------------------

    def _wants_refresh(
        self, account: Account, now: float, *, force: bool, rejected: str | None
    ) -> bool:
        if account.kind != "oauth":
            return False
        if force:
            return True
        if rejected is not None:
            current = _secret(account, "access_token")
            if current is None or _same(current, rejected):
                return True
        return account.is_expiring(now, self.refresh_window_seconds)

    @staticmethod
    def _still_valid(account: Account, now: float) -> bool:
        return account.access_token is not None and (
            account.expires_at is None or now < account.expires_at
        )

    def _check_usable(self, account: Account) -> None:
        if account.needs_relogin:
            raise _relogin_error(account, account.relogin_reason or "refresh refused")

    async def _ensure(
        self,
        account_id: str,
        *,
        force: bool,
        rejected: str | None,
        wait: float | None,
        known: Account | None = None,
    ) -> Account:
        deadline = None if wait is None else asyncio.get_running_loop().time() + wait
        result: Account | None = None
        for _ in range(MAX_JOINS):
            if known is not None and known.id == account_id:
                account, known = known, None
            else:
                account = await self.account(account_id)
            now = self.clock()
            if account.kind != "oauth":
                return account
            self._check_usable(account)
            unsaved = account_id in self._unsaved
            if not unsaved and not self._wants_refresh(
                account, now, force=force, rejected=rejected
            ):
                return account
            if (
                not unsaved
                and not force
                and rejected is None
                and now < self._retry_after.get(account_id, 0.0)
                and self._still_valid(account, now)
            ):
                return account  # a refresh just failed transiently; the token works
            flight = self._inflight.get(account_id)
            mine = flight is None
            if flight is None:
                task = spawn(
                    self._refresh_guarded(account_id, force=force, rejected=rejected),
                    name=f"refresh {account_id}",
                )
                flight = self._inflight[account_id] = _Flight(task)
                task.add_done_callback(lambda t: self._forget(account_id, t))
            try:
                async with asyncio.timeout_at(deadline):
                    outcome = await asyncio.shield(flight.task)
            except TimeoutError:
                # Only this caller gives up: the refresh goes on and saves.
                result = self._current(account_id)
                if result is not None and self._usable_despite_failure(
                    result, force=force, rejected=rejected
                ):
                    return result
                raise RefreshFailed(
                    f"the token refresh of account {account.label!r} takes longer "
                    f"than {wait:g} s; it goes on in the background",
                    flight,
                ) from None
            # The task ran with its starter's flags: judge the outcome with ours.
            result = outcome.account
            if outcome.error is not None:
                if result is not None and self._usable_despite_failure(
                    result, force=force, rejected=rejected
                ):
                    return result
                if isinstance(outcome.error, TransientAuthError):
                    raise RefreshFailed(str(outcome.error), flight) from outcome.error
                raise outcome.error
            assert result is not None
            if mine or (
                (outcome.refreshed or not force)
                and not self._wants_refresh(
                    result, self.clock(), force=False, rejected=rejected
                )
            ):
                return result
            # The shared task did not do what we need (renew the token refused to
            # us, or refresh at all when forced): start our own.
        if result is not None and self._usable_despite_failure(
            result, force=force, rejected=rejected
        ):
            return result
        raise TransientAuthError(
            f"could not get a new token for account {account_id!r}; try again later"
        )

    def _usable_despite_failure(
        self, account: Account, *, force: bool, rejected: str | None
    ) -> bool:
        """After a failed refresh: may this caller still use ``account``'s token?"""
        if force or not self._still_valid(account, self.clock()):
            return False
        return rejected is None or not _same(_secret(account, "access_token"), rejected)

    def _forget(self, account_id: str, task: asyncio.Task[_Outcome]) -> None:
        flight = self._inflight.get(account_id)
        if flight is not None and flight.task is task:
            del self._inflight[account_id]
        if not task.cancelled():
            task.exception()  # retrieved: no "never retrieved" noise if all gave up

    @contextlib.asynccontextmanager
    async def _file_lock(self) -> AsyncIterator[None]:
        if self._mutex is None:
            self._mutex = asyncio.Lock()
        async with self._mutex:
            await asyncio.to_thread(ensure_private_dir, self.store.path.parent)
            lock = filelock.AsyncFileLock(
                self._lock_path, timeout=self._lock_timeout, mode=LOCK_FILE_MODE
            )
            try:
                await lock.acquire()
            except filelock.Timeout:
                raise StoreError(
                    f"{self.store.path} is locked by another process (waited "
                    f"{self._lock_timeout:g} s)",
                    path=self.store.path,
                ) from None
            try:
                yield
            finally:
                await lock.release()

    async def _refresh_guarded(
        self, account_id: str, *, force: bool, rejected: str | None
    ) -> _Outcome:
        try:
            async with self._file_lock():
                # Re-read under the lock: another process may have refreshed already.
                current = await asyncio.to_thread(self.store.read)
                self._remember(current)
                await self._save_unsaved(account_id)
                account = self._current(account_id)
                if account is None:
                    raise UnknownAccount(f"no account with id {account_id!r}")
                self._check_usable(account)
                now = self.clock()
                if not self._wants_refresh(
                    account, now, force=force, rejected=rejected
                ):
                    log.debug("account %s needs no refresh now", account.label)
                    return _Outcome(account)
                if (
                    not force
                    and rejected is None
                    and now < self._retry_after.get(account_id, 0.0)
                    and self._still_valid(account, now)
                ):
                    return _Outcome(account)  # came to save unsaved tokens only
                return _Outcome(await self._refresh_locked(account), refreshed=True)
        except (NeedsRelogin, UnknownAccount):
            raise
        except QwenError as e:
            return self._after_transient(account_id, e)

    async def _save_unsaved(self, account_id: str) -> None:
        """Try again to write tokens a refresh returned; the caller holds the lock."""
        unsaved = self._unsaved.get(account_id)
        if unsaved is None or self._current(account_id) is None:
            return  # nothing pending (or the file has another login now)

        def change(f: AccountsFile) -> AccountsFile:
            return f.edit(account_id, lambda a: unsaved.apply(a) or a)

        try:
            written = await self._write(change)
        except StoreError as e:
            log.debug("still cannot save the new tokens: %s", redact.redact(str(e)))
            return
        if self._unsaved.get(account_id) is unsaved:
            del self._unsaved[account_id]
        saved = written.get(account_id)
        log.warning(
            "the new login of account %s (%s) is saved to %s now",
            saved.label if saved else account_id,
            account_id,
            self.store.path,
        )

    async def _refresh_locked(self, account: Account) -> Account:
        """Refresh ``account``; the caller holds the file lock."""
        refresh_token = _secret(account, "refresh_token")
        if refresh_token is None:
            reason = "no refresh token stored"
            await self._write(
                lambda f: f.edit(
                    account.id, lambda a: mark_needs_relogin(a, reason, self.clock())
                )
            )
            raise self._log_relogin(account, reason)
        self.refreshes += 1
        try:
            tokens = await self.client.refresh(refresh_token)
        except NeedsRelogin as e:
            reason = redact.redact(e.reason or str(e))
            self._unsaved.pop(account.id, None)  # its refresh token is dead too
            await self._write(
                lambda f: f.edit(
                    account.id, lambda a: mark_needs_relogin(a, reason, self.clock())
                )
            )
            raise self._log_relogin(account, reason) from None
        now = self.clock()
        redact.register(tokens.access_token, tokens.refresh_token)
        if tokens.refresh_token is None:  # not rotated: the one we sent stays good
            tokens = replace(tokens, refresh_token=refresh_token)
        self._retry_after.pop(account.id, None)
        # ``account`` may carry unsaved tokens: the file holds the ones they replaced.
        unsaved = _Unsaved(tokens, now, based_on=self._file_refresh_token(account.id))
        previous = self._unsaved.get(account.id)
        # Persist first: a rotated refresh token must survive a crash right after.
        try:
            written = await self._write(
                lambda f: f.edit(account.id, lambda a: unsaved.apply(a) or a)
            )
        except StoreError as e:
            # The server has retired the old refresh token: these tokens are the
            # only good ones now. Keep them, use them, and save them later.
            self._unsaved[account.id] = unsaved
            if previous is None:
                log.error(
                    "the new login of account %s (%s) could not be saved: %s. It is "
                    "kept in memory and used; saving is retried on every use. If "
                    "this process stops first, the account needs a new login: %s",
                    account.label,
                    account.id,
                    redact.redact(str(e)),
                    relogin_command(account.label),
                )
            fresh = self._current(account.id)
            if fresh is None:
                raise UnknownAccount(f"account {account.label!r} was removed") from None
            return fresh
        self._unsaved.pop(account.id, None)
        fresh = written.get(account.id)
        if fresh is None:  # removed while we were refreshing
            raise UnknownAccount(f"account {account.label!r} was removed")
        log.info(
            "refreshed the token of account %s (%s); valid for %s",
            fresh.label,
            fresh.id,
            _duration(fresh.expires_at - now if fresh.expires_at else None),
        )
        return fresh

    def _file_refresh_token(self, account_id: str) -> str | None:
        """The refresh token the file (as last read) holds for the account."""
        on_file = self._cache.get(account_id) if self._cache else None
        return None if on_file is None else _secret(on_file, "refresh_token")

    async def _write(
        self, change: Callable[[AccountsFile], AccountsFile]
    ) -> AccountsFile:
        """Read, change and write the file; the caller holds the file lock."""

        def work() -> AccountsFile:
            new = change(self.store.read())
            atomic_write(self.store.path, new.to_json())
            return new

        written = await asyncio.to_thread(work)
        self._remember(written)
        return written

    def _log_relogin(self, account: Account, reason: str) -> NeedsRelogin:
        log.warning(
            "account %s (%s) needs a new login: the refresh token was refused (%s). "
            "It is left out of rotation; run: %s",
            account.label,
            account.id,
            reason,
            relogin_command(account.label),
        )
        return _relogin_error(account, reason)

    def _after_transient(self, account_id: str, error: QwenError) -> _Outcome:
        self._retry_after[account_id] = self.clock() + self.transient_backoff
        account = self._current(account_id)
        label = account.label if account else account_id
        log.warning(
            "could not refresh the token of account %s: %s (retrying in %s)",
            label,
            redact.redact(str(error)),
            _duration(self.transient_backoff),
        )
        return _Outcome(account, error)


def _relogin_error(account: Account, reason: str) -> NeedsRelogin:
    return NeedsRelogin(
        f"account {account.label!r} needs a new login ({reason}); run: "
        f"{relogin_command(account.label)}",
        account_id=account.id,
        label=account.label,
        reason=reason,
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "no expiry"
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
