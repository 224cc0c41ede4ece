"""The token lifecycle: when to refresh, single flight, cross-process, re-login."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import filelock
import pytest
from pydantic import SecretStr

from qwen_oauth_mitm import store as store_mod
from qwen_oauth_mitm.accounts import Account, AccountsFile
from qwen_oauth_mitm.errors import CorruptStateError, StoreError
from qwen_oauth_mitm.oauth import tokens as tokens_mod
from qwen_oauth_mitm.oauth.client import OAuthClient
from qwen_oauth_mitm.oauth.errors import NeedsRelogin, TransientAuthError
from qwen_oauth_mitm.oauth.fake_server import FakeQwenOAuth
from qwen_oauth_mitm.oauth.tokens import RefreshFailed, TokenManager, UnknownAccount
from qwen_oauth_mitm.store import JsonStateFile

from .oauth_helpers import oauth_account

Store = JsonStateFile[AccountsFile]
WINDOW = 300.0


@pytest.fixture
async def client(fake: FakeQwenOAuth) -> AsyncIterator[OAuthClient]:
    async with OAuthClient(fake.url, fake.client_id) as c:
        yield c


def seed(store: Store, fake: FakeQwenOAuth, *specs: tuple[str, float]) -> list[Account]:
    """Accounts ``label`` expiring at ``now + offset`` with live tokens at the fake."""
    now = time.time()
    accounts = [
        oauth_account(fake.issue_tokens(), label=label, expires_at=now + offset)
        for label, offset in specs
    ]
    store.write(AccountsFile(accounts=tuple(accounts)))
    return accounts


def manager(store: Store, client: OAuthClient, **kw: Any) -> TokenManager:
    return TokenManager(store, client, refresh_window_seconds=WINDOW, **kw)


def secret(account: Account, field: str) -> str:
    value = getattr(account, field)
    assert isinstance(value, SecretStr)
    return value.get_secret_value()


async def test_a_fresh_token_is_used_as_is(
    store: Store, fake: FakeQwenOAuth, client: OAuthClient
) -> None:
    (acct,) = seed(store, fake, ("a", 3600))
    token = await manager(store, client).access_token(acct.id)
    assert token == secret(acct, "access_token")
    assert fake.counts["refresh"] == 0


async def test_a_known_account_spares_the_look_at_the_file(
    store: Store,
    fake: FakeQwenOAuth,
    client: OAuthClient,
    count_calls: Callable[[object, str], list[object]],
) -> None:
    (acct,) = seed(store, fake, ("a", 3600))
    mgr = manager(store, client)
    known = (await mgr.accounts()).get(acct.id)
    assert known is not None
    looks = count_calls(store, "signature")
    assert await mgr.access_token(acct.id, known=known) == secret(acct, "access_token")
    assert looks == []
    assert await mgr.access_token(acct.id) == secret(acct, "access_token")
    assert len(looks) == 1  # without it, the file is looked at


async def test_a_known_account_that_is_expiring_is_refreshed_all_the_same(
    store: Store, fake: FakeQwenOAuth, client: OAuthClient
) -> None:
    (acct,) = seed(store, fake, ("a", 10))  # inside the refresh window
    mgr = manager(store, client)
    known = (await mgr.accounts()).get(acct.id)
    token = await mgr.access_token(acct.id, known=known)
    assert token != secret(acct, "access_token")
    assert fake.counts["refresh"] == 1
    saved = store.read().get(acct.id)
    assert saved is not None
    assert secret(saved, "access_token") == token


async def test_a_known_account_of_another_id_is_not_taken(
    store: Store, fake: FakeQwenOAuth, client: OAuthClient
) -> None:
    a, b = seed(store, fake, ("a", 3600), ("b", 3600))
    mgr = manager(store, client)
    token = await mgr.access_token(b.id, known=a)
    assert token == secret(b, "access_token")


async def test_an_expiring_token_is_refreshed_and_persisted_first(
    store: Store, fake: FakeQwenOAuth, client: OAuthClient
) -> None:
    (acct,) = seed(store, fake, ("a", WINDOW - 1))
    mgr = manager(store, client)
    token = await mgr.access_token(acct.id)
    assert fake.counts["refresh"] == 1
    assert token != secret(acct, "access_token")
    assert fake.is_valid_access_token(token)
    on_disk = store.read().accounts[0]
    assert secret(on_disk, "access_token") == token
    # the rotated refresh token is on disk, and the old one is dead at the fake
    assert secret(on_disk, "refresh_token") != secret(acct, "refresh_token")
    assert secret(on_disk, "refresh_token") in fake.issued
    assert on_disk.expires_at == pytest.approx(time.time() + fake.token_lifetime, abs=5)
    assert on_disk.id == acct.id
    assert on_disk.label == acct.label


async def test_the_old_refresh_token_is_kept_when_none_comes_back(
    store: Store, fake: FakeQwenOAuth, client: OAuthClient
) -> None:
    fake.rotate_refresh_tokens = False
    (acct,) = seed(store, fake, ("a", -10))
    await manager(store, client).access_token(acct.id)
    on_disk = store.read().accounts[0]
    assert secret(on_disk, "refresh_token") == secret(acct, "refresh_token")


async def test_fifty_concurrent_demands_make_one_refresh(
    store: Store, fake: FakeQwenOAuth, client: OAuthClient
) -> None:
    fake.refresh_delay = 0.2
    (acct,) = seed(store, fake, ("a", -10))
    mgr = manager(store, client)
    results = await asyncio.gather(*(mgr.access_token(acct.id) for _ in range(50)))
    assert fake.counts["refresh"] == 1
    assert len(set(results)) == 1
    assert mgr.refreshes == 1
    # later demands use the new token without asking again
    assert await mgr.access_token(acct.id) == results[0]
    assert fake.counts["refresh"] == 1


async def test_a_cancelled_caller_does_not_cancel_the_refresh(
    store: Store, fake: FakeQwenOAuth, client: OAuthClient
) -> None:
    fake.refresh_delay = 0.2
    (acct,) = seed(store, fake, ("a", -10))
    mgr = manager(store, client)
    impatient = asyncio.ensure_future(mgr.access_token(acct.id))
    patient = asyncio.ensure_future(mgr.access_token(acct.id))
    await asyncio.sleep(0.05)
    impatient.cancel()
    token = await patient
    assert fake.is_valid_access_token(token)
    assert impatient.cancelled()
    assert fake.counts["refresh"] == 1


async def test_refreshes_of_different_accounts_are_separate(
    store: Store, fake: FakeQwenOAuth, client: OAuthClient
) -> None:
    a, b = seed(store, fake, ("a", -10), ("b", -10))
    mgr = manager(store, client)
    await asyncio.gather(mgr.access_token(a.id), mgr.access_token(b.id))
    assert fake.counts["refresh"] == 2
    assert all(not x.is_expiring(time.time(), WINDOW) for x in store.read().accounts)


async def test_after_unauthorized_refreshes_once_per_rejected_token(
    store: Store, fake: FakeQwenOAuth, client: OAuthClient
) -> None:
    fake.refresh_delay = 0.1
    (acct,) = seed(store, fake, ("a", 3600))
    mgr = manager(store, client)
    old = secret(acct, "access_token")
    results = await asyncio.gather(
        *(mgr.after_unauthorized(acct.id, old) for _ in range(10))
    )
    assert fake.counts["refresh"] == 1
    new = secret(results[0], "access_token")
    assert new != old
    # a late 401 for the old token gets the new one, with no further refresh
    late = await mgr.after_unauthorized(acct.id, old)
    assert secret(late, "access_token") == new
    assert fake.counts["refresh"] == 1


async def test_a_token_renewed_by_another_process_is_picked_up(
    store: Store, fake: FakeQwenOAuth, client: OAuthClient
) -> None:
    (acct,) = seed(store, fake, ("a", -10))
    mgr = manager(store, client)
    assert (await mgr.accounts()).accounts[0].id == acct.id  # cached
    fresh = fake.issue_tokens()
    renewed = oauth_account(fresh, label="a", expires_at=time.time() + 3600)
    store.update(lambda f: f.put(renewed.model_copy(update={"id": acct.id})))
    os.utime(store.path, ns=(time.time_ns() + 10**9,) * 2)  # coarse mtime clocks
    assert await mgr.access_token(acct.id) == fresh["access_token"]
    assert fake.counts["refresh"] == 0


async def test_the_file_lock_is_held_during_the_refresh_and_rechecked(
    store: Store, fake: FakeQwenOAuth, client: OAuthClient
) -> None:
    """Another process holding the lock refreshes; we wait, re-read, don't refresh."""
    (acct,) = seed(store, fake, ("a", -10))
    mgr = manager(store, client)
    await mgr.accounts()
    other = filelock.FileLock(str(store.path) + ".lock")
    other.acquire()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    tick_task = asyncio.ensure_future(ticker())
    demand = asyncio.ensure_future(mgr.access_token(acct.id))
    await asyncio.sleep(0.3)
    assert not demand.done()  # waiting for the lock...
    assert ticks > 10  # ...without blocking the event loop
    fresh = fake.issue_tokens()
    renewed = oauth_account(fresh, label="a", expires_at=time.time() + 3600)
    data = AccountsFile(accounts=(renewed.model_copy(update={"id": acct.id}),))
    store.path.write_bytes(data.to_json())
    other.release()
    assert await demand == fresh["access_token"]
    assert fake.counts["refresh"] == 0
    tick_task.cancel()


async def test_lock_timeout_with_a_still_valid_token_keeps_working(
    store: Store, fake: FakeQwenOAuth, client: OAuthClient
) -> None:
    (acct,) = seed(store, fake, ("a", 60))  # in the window but valid
    mgr = manager(store, client, lock_timeout=0.1)
    other = filelock.FileLock(str(store.path) + ".lock")
    with other:
        token = await mgr.access_token(acct.id)
    assert token == secret(acct, "access_token")
    assert fake.counts["refresh"] == 0


@pytest.mark.parametrize("style", ["invalid_request", "invalid_grant"])
async def test_dead_refresh_token_marks_only_that_account(
    store: Store,
    fake: FakeQwenOAuth,
    client: OAuthClient,
    caplog: pytest.LogCaptureFixture,
    style: str,
) -> None:
    fake.dead_refresh_error = style  # type: ignore[assignment]
    dead, alive = seed(store, fake, ("work", -10), ("home", 3600))
    fake.revoke(secret(dead, "refresh_token"))
    before = store.read().get(alive.id)
    mgr = manager(store, client)
    with caplog.at_level(logging.WARNING), pytest.raises(NeedsRelogin) as info:
        await mgr.access_token(dead.id)
    assert info.value.account_id == dead.id
    assert "qwen-oauth login --label work" in str(info.value)
    marked = store.read().get(dead.id)
    assert marked is not None
    assert marked.needs_relogin
    assert style in (marked.relogin_reason or "")
    assert store.read().get(alive.id) == before
    assert await mgr.access_token(alive.id) == secret(alive, "access_token")
    logged = caplog.text
    assert "work" in logged
    assert dead.id in logged
    assert "qwen-oauth login --label work" in logged
    # a marked account is not refreshed again: it fails at once
    with pytest.raises(NeedsRelogin):
        await mgr.access_token(dead.id)
    assert fake.counts["refresh"] == 1


async def test_a_server_error_is_transient_and_marks_nothing(
    store: Store, fake: FakeQwenOAuth, client: OAuthClient
) -> None:
    fake.refresh_failure = "server_error"
    now = [time.time()]
    (acct,) = seed(store, fake, ("a", 60))  # expiring but still valid
    mgr = manager(store, client, clock=lambda: now[0], transient_backoff=30)
    token = await mgr.access_token(acct.id)
    assert token == secret(acct, "access_token")  # the old one still works
    assert fake.counts["refresh"] == 1
    assert not store.read().accounts[0].needs_relogin
    await mgr.access_token(acct.id)  # within the back-off: no new attempt
    assert fake.counts["refresh"] == 1
    now[0] += 31
    fake.refresh_failure = None
    token = await mgr.access_token(acct.id)
    assert token != secret(acct, "access_token")
    assert fake.counts["refresh"] == 2


async def test_a_server_error_with_an_expired_token_raises(
    store: Store, fake: FakeQwenOAuth, client: OAuthClient
) -> None:
    fake.refresh_failure = "server_error"
    (acct,) = seed(store, fake, ("a", -10))
    with pytest.raises(TransientAuthError):
        await manager(store, client).access_token(acct.id)
    assert not store.read().accounts[0].needs_relogin


async def test_a_refresh_answer_for_a_foreign_host_is_kept_nowhere(
    store: Store, fake: FakeQwenOAuth, client: OAuthClient
) -> None:
    (acct,) = seed(store, fake, ("a", 60))  # expiring but still valid
    before = fake.issued[:]
    fake.resource_url = "portal.qwen.ai.evil.example"
    token = await manager(store, client).access_token(acct.id)
    assert fake.counts["refresh"] == 1
    assert token == secret(acct, "access_token")  # the refused ones are not used
    on_disk = store.read().accounts[0]
    assert on_disk.resource_url == acct.resource_url
    assert secret(on_disk, "access_token") == token
    assert not on_disk.needs_relogin  # refused, not dead: retried after a back-off
    assert [t for t in fake.issued if t not in before]  # the server did answer


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
async def test_the_refresh_lock_file_is_0600(
    store: Store, fake: FakeQwenOAuth, client: OAuthClient
) -> None:
    (acct,) = seed(store, fake, ("a", -10))
    lock = store.path.with_name(store.path.name + ".lock")
    lock.unlink()  # the store's own lock made it; this one is the manager's
    await manager(store, client).access_token(acct.id)
    assert fake.counts["refresh"] == 1
    assert lock.stat().st_mode & 0o777 == 0o600


def _fail_once_after_the_refresh(
    monkeypatch: pytest.MonkeyPatch, client: OAuthClient, store: Store, how: str
) -> list[str]:
    """After the server answered a refresh, the next write (or read) fails once."""
    armed: list[str] = []
    real_refresh = client.refresh
    real_write = store_mod.atomic_write
    real_read = store.read

    async def refresh(refresh_token: str) -> Any:
        answer = await real_refresh(refresh_token)
        armed.append(how)
        return answer

    def write(path: Path, data: bytes) -> None:
        if armed and armed[-1] == "disk full":
            armed.pop()
            raise StoreError(f"cannot write {path}: No space left on device", path=path)
        real_write(path, data)

    def read() -> AccountsFile:
        if armed and armed[-1] == "corrupt":
            armed.pop()
            raise CorruptStateError(f"{store.path} is not valid", path=store.path)
        return real_read()

    monkeypatch.setattr(client, "refresh", refresh)
    monkeypatch.setattr(tokens_mod, "atomic_write", write)
    monkeypatch.setattr(store, "read", read)
    return armed


def _refresh_tokens_sent(fake: FakeQwenOAuth) -> list[str]:
    return [r.form["refresh_token"] for r in fake.requests if "refresh_token" in r.form]


@pytest.mark.parametrize("how", ["disk full", "corrupt"])
@pytest.mark.parametrize("offset", [-10, 60], ids=["expired", "expiring"])
async def test_a_failed_write_after_a_rotation_keeps_the_new_tokens(
    store: Store,
    fake: FakeQwenOAuth,
    client: OAuthClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    how: str,
    offset: float,
) -> None:
    (acct,) = seed(store, fake, ("a", offset))
    old_refresh = secret(acct, "refresh_token")
    before = store.path.read_bytes()
    _fail_once_after_the_refresh(monkeypatch, client, store, how)
    mgr = manager(store, client)
    with caplog.at_level(logging.WARNING):
        token = await mgr.access_token(acct.id)
    # the server rotated the refresh token: the new tokens are the truth now
    assert fake.counts["refresh"] == 1
    assert token != secret(acct, "access_token")
    assert fake.is_valid_access_token(token)
    assert store.path.read_bytes() == before  # nothing was saved...
    unsaved = [r for r in caplog.records if "could not be saved" in r.getMessage()]
    assert len(unsaved) == 1  # ...and it was said loudly, once
    assert unsaved[0].levelno >= logging.ERROR
    assert old_refresh not in caplog.text
    assert token not in caplog.text
    # the disk recovered: the next demand saves the rotated refresh token, with
    # no request to the server (and never one with the retired refresh token)
    again = await mgr.ensure_fresh(acct.id)
    assert secret(again, "access_token") == token
    on_disk = store.read().accounts[0]
    assert secret(on_disk, "access_token") == token
    assert secret(on_disk, "refresh_token") != old_refresh
    assert secret(on_disk, "refresh_token") in fake.issued
    assert not on_disk.needs_relogin
    assert fake.counts["refresh"] == 1
    assert _refresh_tokens_sent(fake) == [old_refresh]
    assert (
        len([r for r in caplog.records if "could not be saved" in r.getMessage()]) == 1
    )


async def test_an_unsaved_login_is_refreshed_with_its_own_refresh_token(
    store: Store,
    fake: FakeQwenOAuth,
    client: OAuthClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the disk stays broken, the next refresh uses the unsaved refresh token."""
    now = [time.time()]
    (acct,) = seed(store, fake, ("a", -10))
    old_refresh = secret(acct, "refresh_token")
    disk_ok = [True]
    real_write = store_mod.atomic_write

    def write(path: Path, data: bytes) -> None:
        if not disk_ok[0]:
            raise StoreError(f"cannot write {path}: No space left on device", path=path)
        real_write(path, data)

    monkeypatch.setattr(tokens_mod, "atomic_write", write)
    mgr = manager(store, client, clock=lambda: now[0])
    disk_ok[0] = False
    first = await mgr.access_token(acct.id)
    assert fake.is_valid_access_token(first)
    now[0] += fake.token_lifetime  # the unsaved token is expiring now
    second = await mgr.access_token(acct.id)
    assert second not in (first, secret(acct, "access_token"))
    assert fake.is_valid_access_token(second)
    sent = _refresh_tokens_sent(fake)
    assert len(sent) == 2
    assert sent[0] == old_refresh
    assert sent[1] != old_refresh  # never the retired one
    assert not store.read().accounts[0].needs_relogin
    disk_ok[0] = True
    await mgr.ensure_fresh(acct.id)
    on_disk = store.read().accounts[0]
    assert secret(on_disk, "access_token") == second
    assert secret(on_disk, "refresh_token") not in (old_refresh, sent[1])
    assert not on_disk.needs_relogin
    assert fake.counts["refresh"] == 2


async def test_a_rejected_token_is_not_handed_back_by_a_shared_failed_refresh(
    store: Store, fake: FakeQwenOAuth, client: OAuthClient
) -> None:
    """A 401-ed caller joining a plain refresh that fails gets an error, not T."""
    fake.refresh_failure = "server_error"
    fake.refresh_delay = 0.2
    (acct,) = seed(store, fake, ("a", 60))  # expiring but still valid
    old = secret(acct, "access_token")
    mgr = manager(store, client)
    plain = asyncio.ensure_future(mgr.ensure_fresh(acct.id))
    await asyncio.sleep(0.05)
    rejected = asyncio.ensure_future(mgr.after_unauthorized(acct.id, old))
    results = await asyncio.gather(plain, rejected, return_exceptions=True)
    assert fake.counts["refresh"] == 1
    assert isinstance(results[0], Account)
    assert secret(results[0], "access_token") == old  # still fine for a plain caller
    assert isinstance(results[1], TransientAuthError)
    assert not store.read().accounts[0].needs_relogin


async def test_a_failed_forced_refresh_spares_waiters_whose_token_works(
    store: Store, fake: FakeQwenOAuth, client: OAuthClient
) -> None:
    """The ``refresh`` command failing does not fail a plain caller that joined it."""
    fake.refresh_failure = "server_error"
    fake.refresh_delay = 0.2
    (acct,) = seed(store, fake, ("a", 60))  # expiring but still valid
    old = secret(acct, "access_token")
    mgr = manager(store, client)
    forced = asyncio.ensure_future(mgr.refresh(acct.id))
    await asyncio.sleep(0.05)
    plain = asyncio.ensure_future(mgr.ensure_fresh(acct.id))
    results = await asyncio.gather(forced, plain, return_exceptions=True)
    assert fake.counts["refresh"] == 1
    assert isinstance(results[0], TransientAuthError)
    assert isinstance(results[1], Account)
    assert secret(results[1], "access_token") == old


async def test_key_accounts_never_refresh(
    store: Store, fake: FakeQwenOAuth, client: OAuthClient
) -> None:
    key = Account(
        id="acct_key",
        label="k",
        kind="key",
        access_token=SecretStr("sk-1234567890"),
        added_at=0,
        updated_at=0,
    )
    store.write(AccountsFile(accounts=(key,)))
    mgr = manager(store, client)
    assert await mgr.access_token(key.id) == "sk-1234567890"
    assert (await mgr.refresh(key.id)).kind == "key"
    assert fake.counts["requests"] == 0


async def test_unknown_account(store: Store, client: OAuthClient) -> None:
    store.write(AccountsFile())
    with pytest.raises(UnknownAccount):
        await manager(store, client).access_token("acct_nope")


async def test_missing_refresh_token_needs_relogin(
    store: Store, fake: FakeQwenOAuth, client: OAuthClient
) -> None:
    (acct,) = seed(store, fake, ("a", -10))
    store.update(lambda f: f.put(acct.model_copy(update={"refresh_token": None})))
    with pytest.raises(NeedsRelogin, match="no refresh token"):
        await manager(store, client).access_token(acct.id)
    assert store.read().accounts[0].needs_relogin
    assert fake.counts["refresh"] == 0


async def test_forced_refresh(
    store: Store, fake: FakeQwenOAuth, client: OAuthClient
) -> None:
    (acct,) = seed(store, fake, ("a", 3600))
    fresh = await manager(store, client).refresh(acct.id)
    assert secret(fresh, "access_token") != secret(acct, "access_token")
    assert fake.counts["refresh"] == 1


async def test_a_caller_that_stops_waiting_leaves_the_refresh_to_finish_and_save(
    store: Store, fake: FakeQwenOAuth, client: OAuthClient
) -> None:
    """The server rotates the refresh token after the caller gave up: the refresh
    still saves the new one, so the next refresh works (cut short, it would be
    lost, and the retired token sent next would kill the login)."""
    fake.refresh_delay = 0.5
    (acct,) = seed(store, fake, ("a", -10))
    old_refresh = secret(acct, "refresh_token")
    mgr = manager(store, client)
    with pytest.raises(RefreshFailed, match="goes on in the background"):
        await mgr.access_token(acct.id, wait=0.05)
    # Until the refresh has ended, not just saved: a forced refresh arriving
    # before its end would join it rather than make the second HTTP refresh.
    assert await mgr.settle(5)
    on_disk = store.read().accounts[0]
    assert secret(on_disk, "refresh_token") != old_refresh, "the refresh was not saved"
    assert fake.counts["refresh"] == 1
    assert fake.is_valid_access_token(secret(on_disk, "access_token"))
    assert await mgr.access_token(acct.id, wait=0.05) == secret(on_disk, "access_token")
    fake.refresh_delay = 0.0
    again = await mgr.refresh(acct.id)
    assert not again.needs_relogin
    assert fake.is_valid_access_token(secret(again, "access_token"))
    assert _refresh_tokens_sent(fake) == [
        old_refresh,
        secret(on_disk, "refresh_token"),
    ]


async def test_a_forced_refresh_joins_the_refresh_in_flight(
    store: Store, fake: FakeQwenOAuth, client: OAuthClient
) -> None:
    """``refresh`` while a refresh runs: one HTTP refresh serves both, and both
    get its new token (a second refresh back to back would buy nothing)."""
    fake.refresh_delay = 0.2
    (acct,) = seed(store, fake, ("a", -10))
    mgr = manager(store, client)
    plain = asyncio.ensure_future(mgr.access_token(acct.id))
    await asyncio.sleep(0.05)  # the plain caller's refresh is under way
    forced = await mgr.refresh(acct.id)
    assert fake.counts["refresh"] == 1
    assert await plain == secret(forced, "access_token")
    assert fake.is_valid_access_token(secret(forced, "access_token"))


async def test_settle_waits_for_the_refreshes_in_flight(
    store: Store, fake: FakeQwenOAuth, client: OAuthClient
) -> None:
    fake.refresh_delay = 0.3
    accounts = seed(store, fake, ("a", -10), ("b", -10))
    mgr = manager(store, client)
    assert await mgr.settle(0)  # nothing in flight
    for acct in accounts:
        with pytest.raises(RefreshFailed):
            await mgr.access_token(acct.id, wait=0.01)
    assert await mgr.settle(5)
    assert fake.counts["refresh"] == 2
    for saved in store.read().accounts:
        assert fake.is_valid_access_token(secret(saved, "access_token"))


async def test_settle_gives_up_after_its_timeout_and_leaves_the_refresh_running(
    store: Store,
    fake: FakeQwenOAuth,
    client: OAuthClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake.refresh_delay = 0.5
    (acct,) = seed(store, fake, ("my home", -10))
    mgr = manager(store, client)
    with pytest.raises(RefreshFailed):
        await mgr.access_token(acct.id, wait=0.01)
    start = time.monotonic()
    assert not await mgr.settle(0.05)
    assert time.monotonic() - start < 0.4
    assert "my home" in caplog.text
    assert "qwen-oauth login --label 'my home'" in caplog.text
    assert await mgr.settle(5)  # it was not cancelled: it ends and saves
    saved = store.read().accounts[0]
    assert fake.is_valid_access_token(secret(saved, "access_token"))


async def test_the_waiters_of_one_failed_refresh_report_it_once(
    store: Store, fake: FakeQwenOAuth, client: OAuthClient
) -> None:
    """One who gave up early and two who waited to the end: one attempt, so one
    of them, and only one, is the first to report its failure."""
    fake.refresh_failure = "server_error"
    fake.refresh_delay = 0.3
    (acct,) = seed(store, fake, ("a", -10))
    mgr = manager(store, client)
    results = await asyncio.gather(
        mgr.access_token(acct.id, wait=0.05),
        mgr.access_token(acct.id, wait=5),
        mgr.access_token(acct.id, wait=5),
        return_exceptions=True,
    )
    assert fake.counts["refresh"] == 1
    errors = [e for e in results if isinstance(e, RefreshFailed)]
    assert len(errors) == 3
    assert [e.first_report() for e in errors] == [True, False, False]
    assert [e.first_report() for e in errors] == [False, False, False]
    with pytest.raises(RefreshFailed) as next_attempt:  # a new attempt: reported anew
        await mgr.access_token(acct.id, wait=5)
    assert fake.counts["refresh"] == 2
    assert next_attempt.value.first_report()
    assert not store.read().accounts[0].needs_relogin


WORKER = textwrap.dedent(
    """
    import asyncio, hashlib, sys, time
    from pathlib import Path
    from qwen_oauth_mitm.oauth.client import OAuthClient
    from qwen_oauth_mitm.oauth.tokens import TokenManager
    from qwen_oauth_mitm.store import accounts_file

    async def main():
        store = accounts_file(Path(sys.argv[1]))
        start_at = float(sys.argv[4])
        async with OAuthClient(sys.argv[2], sys.argv[3]) as client:
            mgr = TokenManager(store, client, refresh_window_seconds=300)
            account_id = store.read().accounts[0].id
            await asyncio.sleep(max(0.0, start_at - time.time()))
            token = await mgr.access_token(account_id)
        print(hashlib.sha256(token.encode()).hexdigest(), mgr.refreshes)

    asyncio.run(main())
    """
)


@pytest.mark.e2e
def test_two_processes_make_one_refresh(store: Store, fake: FakeQwenOAuth) -> None:
    fake.refresh_delay = 0.5
    seed(store, fake, ("a", -10))
    start_at = str(time.time() + 1.5)  # both start after their imports
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                str(store.path),
                fake.url,
                fake.client_id,
                start_at,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    for (_out, err), proc in zip(outputs, procs, strict=True):
        assert proc.returncode == 0, err
    digests = {out.split()[0] for out, _ in outputs}
    made = sorted(int(out.split()[1]) for out, _ in outputs)
    assert fake.counts["refresh"] == 1
    assert made == [0, 1]
    assert len(digests) == 1  # both use the one new token
    on_disk = secret(store.read().accounts[0], "access_token")
    assert digests == {hashlib.sha256(on_disk.encode()).hexdigest()}
