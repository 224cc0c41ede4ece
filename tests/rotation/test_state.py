"""The tracker-state file model."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from qwen_oauth_mitm.rotation.state import (
    MAX_AFFINITY_ENTRIES,
    AccountTrack,
    Cooldown,
    DayCounters,
    TrackerState,
)


def test_json_round_trip() -> None:
    state = TrackerState(
        accounts={
            "acct_1": AccountTrack(
                health=64.5,
                health_at=1.0,
                tokens=12.25,
                tokens_at=2.0,
                last_used=3.0,
                last_success=3.0,
                last_failure=2.5,
                consecutive_failures=1,
                cooldown=Cooldown(until=99.0, reason="quota", detail="429 quota"),
                today=DayCounters(day="2026-01-05", requests=7, rate_limits=2),
            ),
            "acct_2": AccountTrack(),
        },
        cursor="acct_1",
        cursor_failed=True,
        affinity={"ab" * 16: "acct_1"},
    )
    again = TrackerState.model_validate_json(state.model_dump_json())
    assert again == state


def test_an_empty_file_body_is_a_fresh_state() -> None:
    state = TrackerState.model_validate_json("{}")
    assert state == TrackerState()
    assert state.version == 1


@pytest.mark.parametrize(
    "text",
    [
        '{"version": 2}',
        '{"health": {"0": {"score": 70}}}',  # the reference plugin's index-keyed shape
        '{"accounts": {"a": {"health": 101}}}',
        '{"accounts": {"a": {"tokens": -1}}}',
        '{"accounts": {"a": {"cooldown": {"until": 1, "reason": "sleepy"}}}}',
        '{"accounts": {"a": {"colour": "blue"}}}',
    ],
)
def test_invalid_files_are_rejected(text: str) -> None:
    with pytest.raises(ValidationError):
        TrackerState.model_validate_json(text)


def test_models_are_frozen() -> None:
    track = AccountTrack()
    with pytest.raises(ValidationError):
        track.health = 5  # type: ignore[misc]


def test_an_oversized_affinity_map_keeps_its_newest_entries() -> None:
    entries = {f"k{i}": "acct" for i in range(MAX_AFFINITY_ENTRIES + 10)}
    state = TrackerState(affinity=entries)
    assert len(state.affinity) == MAX_AFFINITY_ENTRIES
    assert next(iter(state.affinity)) == "k10"
