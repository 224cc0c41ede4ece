"""The bounded conversation -> account map."""

from __future__ import annotations

from qwen_oauth_mitm.rotation.affinity import AffinityMap, digest


def test_remembers_the_last_account_per_conversation() -> None:
    m = AffinityMap()
    assert m.get("c1") is None
    m.remember("c1", "acct_a")
    m.remember("c1", "acct_b")
    assert m.get("c1") == "acct_b"
    assert len(m) == 1


def test_keys_are_stored_as_digests_never_as_given() -> None:
    m = AffinityMap()
    secretish = "pck:ses_df1fa2a64ffexINA1rswxaoOAo" + "x" * 10_000
    m.remember(secretish, "acct_a")
    (stored,) = m.to_dict()
    assert stored == digest(secretish)
    assert len(stored) == 32
    assert "ses_" not in stored
    assert digest("a") != digest("b")
    assert digest("\udc80 lone surrogate") == digest("\udc80 lone surrogate")


def test_least_recently_used_is_evicted_first() -> None:
    m = AffinityMap(limit=3)
    for key in ("c1", "c2", "c3"):
        m.remember(key, "acct_" + key)
    m.remember("c1", "acct_c1")  # used again: now the newest
    m.remember("c4", "acct_c4")
    assert m.get("c2") is None
    assert [m.get(k) for k in ("c1", "c3", "c4")] == ["acct_c1", "acct_c3", "acct_c4"]
    assert list(m.to_dict()) == [digest(k) for k in ("c3", "c1", "c4")]


def test_loading_more_than_the_limit_keeps_the_newest() -> None:
    m = AffinityMap({f"k{i}": "acct_a" for i in range(10)}, limit=4)
    assert list(m.to_dict()) == ["k6", "k7", "k8", "k9"]


def test_forget_accounts() -> None:
    m = AffinityMap()
    m.remember("c1", "acct_a")
    m.remember("c2", "acct_b")
    m.remember("c3", "acct_a")
    assert m.forget_accounts({"acct_b"}) == 2
    assert m.get("c2") == "acct_b"
    assert len(m) == 1


def test_lookup_and_store_take_the_digest_get_and_remember_make() -> None:
    m = AffinityMap()
    m.store(digest("c1"), "acct_a")
    assert m.get("c1") == "acct_a"
    m.remember("c2", "acct_b")
    assert m.lookup(digest("c2")) == "acct_b"
    assert m.lookup("c2") is None  # a key that was not digested is another key
