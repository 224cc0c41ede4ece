"""Account rotation: which account serves each request, and what answers teach.

Pure core (no mitmproxy, no I/O, the clock passed in as ``now``):

- ``state``: the tracker-state model persisted to ``qwen-auth-tracker-state.json``;
- ``health``: health score, token bucket and the hybrid score;
- ``ratelimit``: what an upstream error answer means (:func:`classify_error`);
- ``days``: the quota day of a moment, remembered for the rest of that day;
- ``affinity``: the bounded conversation -> account map;
- ``status``: each account's state in words, and the accounts table;
- ``engine``: :class:`Rotation`, the strategies, picks and their settlement;
- ``simulation``: a simulated day against a fake rate-limited upstream.

I/O: ``persist`` (load/save the tracker file through ``store``) and ``bench``
(times :meth:`Rotation.pick`).
"""

from qwen_oauth_mitm.rotation.affinity import AffinityMap
from qwen_oauth_mitm.rotation.engine import (
    AllUnavailable,
    Pick,
    PickReason,
    Rotation,
    wait_before_retry,
)
from qwen_oauth_mitm.rotation.persist import TrackerStore, tracker_file
from qwen_oauth_mitm.rotation.ratelimit import (
    Verdict,
    VerdictKind,
    classify_error,
    embedded_error_status,
    next_quota_reset,
)
from qwen_oauth_mitm.rotation.state import TrackerState
from qwen_oauth_mitm.rotation.status import (
    AccountState,
    AccountStatus,
    render_status_table,
)

__all__ = [
    "AccountState",
    "AccountStatus",
    "AffinityMap",
    "AllUnavailable",
    "Pick",
    "PickReason",
    "Rotation",
    "TrackerState",
    "TrackerStore",
    "Verdict",
    "VerdictKind",
    "classify_error",
    "embedded_error_status",
    "next_quota_reset",
    "render_status_table",
    "tracker_file",
    "wait_before_retry",
]
