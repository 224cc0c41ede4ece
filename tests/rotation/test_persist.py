"""Loading and saving the tracker state."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from qwen_oauth_mitm.config import Config
from qwen_oauth_mitm.rotation.engine import Pick, Rotation
from qwen_oauth_mitm.rotation.persist import TrackerStore, tracker_file
from qwen_oauth_mitm.rotation.simulation import fake_account
from qwen_oauth_mitm.rotation.state import TrackerState

T0 = 1_767_571_200.0
ACCOUNTS = [fake_account("acct_a"), fake_account("acct_b")]


def store_at(path: Path, interval: float = 5.0) -> TrackerStore:
    return TrackerStore(tracker_file(path), interval=interval)


def used_engine() -> Rotation:
    rot = Rotation(Config())
    pick = rot.pick(ACCOUNTS, T0, conversation_key="c1")
    assert isinstance(pick, Pick)
    rot.record_rate_limit(pick, T0, until=T0 + 600, detail="429 Throttling")
    return rot


def test_a_missing_file_is_a_fresh_state(tmp_path: Path) -> None:
    assert store_at(tmp_path / "t.json").load() == TrackerState()


def test_round_trip_and_recovery_computed_after_hours(tmp_path: Path) -> None:
    path = tmp_path / "qwen-auth-tracker-state.json"
    rot = used_engine()
    assert store_at(path).save(rot)
    reloaded = Rotation(Config(), store_at(path).load())
    assert reloaded.snapshot() == rot.snapshot()
    before = rot.status(ACCOUNTS, T0 + 1)
    assert reloaded.status(ACCOUNTS, T0 + 1) == before
    assert before[0].state == "rate_limited"
    # Five hours later: the cooldown is over and 60 + 5 h x 2 = 70.
    later = reloaded.status(ACCOUNTS, T0 + 5 * 3600)[0]
    assert later.state == "ok"
    assert later.health == pytest.approx(70)
    # The conversation still goes back to its account.
    pick = reloaded.pick(ACCOUNTS, T0 + 5 * 3600, conversation_key="c1")
    assert isinstance(pick, Pick)
    assert (pick.account.id, pick.reason) == ("acct_a", "affinity")


def test_a_corrupt_file_is_moved_aside_and_rotation_starts_afresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "qwen-auth-tracker-state.json"
    path.write_text('{"version": 1, "accounts": {"a": {"health": "lots"}}}')
    with caplog.at_level(logging.WARNING):
        assert store_at(path).load() == TrackerState()
    aside = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1
    assert "lots" in aside[0].read_text()
    assert not path.exists()
    assert "corrupt" in caplog.text


def test_maybe_save_waits_for_a_change_and_the_interval(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    store = store_at(path, interval=5.0)
    rot = Rotation(Config())
    assert not store.maybe_save(rot, 100.0)  # nothing happened yet
    assert not path.exists()
    rot.pick(ACCOUNTS, T0)
    assert store.maybe_save(rot, 100.0)
    assert not store.maybe_save(rot, 101.0)  # unchanged
    rot.pick(ACCOUNTS, T0)
    assert not store.maybe_save(rot, 103.0)  # too soon
    assert store.maybe_save(rot, 105.0)
    assert TrackerState.model_validate_json(path.read_bytes()) == rot.snapshot()


def test_a_failing_write_is_logged_once_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "folder"
    blocker.write_text("a file where the folder should be")
    store = store_at(blocker / "t.json", interval=0)
    rot = used_engine()
    with caplog.at_level(logging.INFO, logger="qwen_oauth_mitm.rotation.persist"):
        assert not store.save(rot)
        rot.pick(ACCOUNTS, T0 + 1)
        assert not store.maybe_save(rot, 1.0)
        assert not store.maybe_save(rot, 2.0)
        failures = [r for r in caplog.records if "cannot save" in r.getMessage()]
        assert len(failures) == 1
        blocker.unlink()
        assert store.maybe_save(rot, 3.0)
    assert "saved again" in caplog.text
    assert TrackerState.model_validate_json((blocker / "t.json").read_bytes()) == (
        rot.snapshot()
    )


def test_an_unreadable_file_starts_afresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "t.json"
    path.mkdir()  # reading a folder fails with an OSError
    with caplog.at_level(logging.WARNING):
        assert store_at(path).load() == TrackerState()
    assert "starting afresh" in caplog.text
