"""Id factories."""

from __future__ import annotations

import re

from qwen_oauth_mitm.translate import counter_ids, random_ids


def test_counter_ids_count_per_prefix() -> None:
    ids = counter_ids()
    assert [ids("resp"), ids("msg"), ids("msg"), ids("fc")] == [
        "resp_0001",
        "msg_0001",
        "msg_0002",
        "fc_0001",
    ]
    assert counter_ids()("resp") == "resp_0001"


def test_random_ids_look_like_openai_ids() -> None:
    first, second = random_ids("resp"), random_ids("resp")
    assert re.fullmatch(r"resp_[0-9a-f]{48}", first)
    assert first != second
