"""``parse_body``'s checks on bodies of many small values: what they cost, and the
field they name. (Bytes that are not usable JSON: ``test_hostile_requests``.)"""

from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import Callable

import pytest

from qwen_oauth_mitm.translate import MAX_DEPTH, TranslationError, parse_body

_ZEROS = 1_000_000
"""~1.9 MiB of ``0,``: the most values a byte of body can buy."""
_LEVELS = MAX_DEPTH - 2
"""Objects nested inside ``input``'s list, as deep as the limit lets them go."""


def _zeros() -> bytes:
    return b'{"model":"m","input":[' + b",".join([b"0"] * _ZEROS) + b"]}"


def _deep_objects() -> bytes:
    """Objects nested to the limit, side by side: ~2.6 MiB, 200,000 objects."""
    one = b'{"a":' * _LEVELS + b"0" + b"}" * _LEVELS
    return b'{"model":"m","input":[' + b",".join([one] * 1_000) + b"]}"


def _best_of(runs: int, call: Callable[[], object]) -> float:
    """The fastest of ``runs`` calls: noise (another process, the GC) only adds."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def _peak(call: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("make", [_zeros, _deep_objects], ids=["zeros", "deep"])
def test_many_small_values_cost_about_what_json_loads_does(
    make: Callable[[], bytes],
) -> None:
    """The request hook parses bodies of up to the size limit: the checks after
    ``json.loads`` (depth, NaN) must not cost many times the parse itself, nor
    memory per value (one tuple per value took ~45x the body and 36 s at 30 MiB).
    Measured: parse_body is ~1.5-2x json.loads (it includes it), +0 MiB."""
    raw = make()
    assert parse_body(raw) == json.loads(raw)  # accepted: within every limit
    loads = _best_of(3, lambda: json.loads(raw))
    parse = _best_of(3, lambda: parse_body(raw))
    extra = _peak(lambda: parse_body(raw)) - _peak(lambda: json.loads(raw))
    assert parse < 4 * loads + 0.05, (parse, loads, extra)
    assert extra < 256 * 1024, (parse, loads, extra)


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (  # after containers, empty and not, on the way down and back up
            b'{"a":[[],{"b":[1,2.5,{}]}],"c":{"d":[0,{"e":Infinity}]}}',
            "c.d[1].e",
        ),
        (b'{"a":[NaN],"b":NaN}', "a[0]"),  # json.loads makes one NaN object: the first
        (b'{"a":{"b":[[[1e999]]]}}', "a.b[0][0][0]"),  # a float too large: inf
        # An empty key first: the path must not pass for the top-level field.
        (b'{"":{"instructions":Infinity}}', ".instructions"),
    ],
)
def test_the_first_non_number_is_named(raw: bytes, param: str) -> None:
    with pytest.raises(TranslationError) as info:
        parse_body(raw)
    assert info.value.param == param
    assert f"'{param}'" in info.value.message


@pytest.mark.parametrize("raw", [b"[1,[NaN]]", b"-Infinity", b"1e999"])
def test_a_non_number_outside_an_object_is_invalid_json(raw: bytes) -> None:
    with pytest.raises(TranslationError) as info:
        parse_body(raw)
    assert (info.value.code, info.value.param) == ("invalid_json", None)
