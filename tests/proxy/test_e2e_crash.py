"""End to end: ``mitmdump`` SIGKILLed again and again while it writes state.

The cycle and its checks are in :mod:`.crash` (``scripts/soak`` runs a longer
series): after every kill both state files parse and are 0600, no account is
lost (neither the seeded OAuth logins nor the API keys ``qwen-oauth add-key``
added meanwhile), and every OAuth account still holds a refresh token the server
accepts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .crash import crash_cycles

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(120)]

KILLS = 9


def test_sigkill_under_load_never_loses_an_account_or_a_refresh_token(
    tmp_path: Path,
) -> None:
    report = crash_cycles(tmp_path, kills=KILLS, seed_value=9)
    assert report.violations == [], report
    assert report.kills == KILLS
    # The cycles did what they are for: served, rotated, added, cut writes;
    # and the write after them removed what the cut ones left.
    assert report.served > 0, report
    assert report.refreshes > 0, report
    assert report.added > 0, report
    assert report.mid_write > 0, report
    assert report.leftovers == 0, report
