from __future__ import annotations

import json

from pydantic import SecretStr

from qwen_oauth_mitm.accounts import Account, AccountsFile, new_account_id


def make(label: str = "a", **kw: object) -> Account:
    fields: dict[str, object] = {
        "id": new_account_id(),
        "label": label,
        "kind": "oauth",
        "added_at": 1.0,
        "updated_at": 1.0,
    }
    fields.update(kw)
    return Account.model_validate(fields)


def test_tokens_never_show_in_repr_or_str() -> None:
    a = make(access_token="AT-secret-1", refresh_token="RT-secret-2")
    for text in (repr(a), str(a), repr(AccountsFile(accounts=(a,)))):
        assert "AT-secret-1" not in text
        assert "RT-secret-2" not in text


def test_file_json_round_trips_with_tokens() -> None:
    a = make(access_token="AT-1", refresh_token="RT-1", expires_at=123.5)
    f = AccountsFile(accounts=(a,))
    data = json.loads(f.to_json())
    assert data["version"] == 1
    assert data["accounts"][0]["refresh_token"] == "RT-1"
    back = AccountsFile.model_validate_json(f.to_json())
    assert back == f
    assert back.accounts[0].access_token == SecretStr("AT-1")


def test_put_replaces_by_id_and_keeps_order() -> None:
    a, b = make("a"), make("b")
    f = AccountsFile().put(a).put(b)
    f2 = f.put(a.model_copy(update={"label": "renamed"}))
    assert [x.label for x in f2.accounts] == ["renamed", "b"]
    assert f2.remove(a.id).accounts == (b,)


def test_find_by_id_then_label() -> None:
    a = make("work")
    b = make(a.id)  # a label that looks like another account's id
    f = AccountsFile(accounts=(a, b))
    assert f.find(a.id) is a
    assert f.find("work") is a
    assert f.find("nope") is None


def test_same_login_by_identity_or_refresh_token() -> None:
    a = make("a", identity="u@example.com", refresh_token="RT-a")
    f = AccountsFile(accounts=(a,))
    assert f.same_login(make("x", identity="u@example.com")) is a
    assert f.same_login(make("x", refresh_token="RT-a")) is a
    assert (
        f.same_login(make("x", identity="v@example.com", refresh_token="RT-b")) is None
    )
    # Kinds never match each other.
    assert f.same_login(make("x", kind="key", refresh_token="RT-a")) is None


def test_unique_label() -> None:
    f = AccountsFile(accounts=(make("work"), make("work-1"), make("account-3")))
    assert f.unique_label("home") == "home"
    assert f.unique_label("work") == "work-2"
    assert f.unique_label(None) == "account-4"


def test_is_expiring() -> None:
    a = make(access_token="t", expires_at=1000.0)
    assert not a.is_expiring(now=600.0, window_seconds=300)
    assert a.is_expiring(now=700.0, window_seconds=300)
    assert a.is_expiring(now=1001.0, window_seconds=0)
    assert make().is_expiring(now=0.0, window_seconds=0)  # no token at all
    assert not make(access_token="k").is_expiring(now=1e12, window_seconds=300)
