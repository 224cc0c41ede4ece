"""Stream-translation throughput beside a json.loads + json.dumps baseline.

    .venv/bin/python scripts/bench_translate.py [--chunks N] [--repeat R]

Builds an upstream Chat Completions stream in the Qwen portal's shape (reasoning,
text, two tool calls, usage), then times, in the same run and on the same bytes:

- baseline: for each chunk's ``data:`` payload, ``json.loads`` then ``json.dumps``;
- translate: ``StreamTranslator.feed`` over 16 KiB network-sized pieces + ``finish``.

Prints MB/s of upstream input for both and their ratio (goal: >= 0.5).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "addon"))

from qwen_oauth_mitm.translate import (
    StreamTranslator,
    counter_ids,
    translate_request,
)

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "Grüße",
    "世界",
    "stay",
    "in",
]


def _chunk(delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
    return {
        "choices": [
            {"delta": delta, "finish_reason": finish, "index": 0, "logprobs": None}
        ],
        "object": "chat.completion.chunk",
        "usage": None,
        "created": 1764000000,
        "system_fingerprint": None,
        "model": "coder-model",
        "id": "chatcmpl-8f3c2a1b-0d4e-4f7a-9b6c-2e5d7a9c1f30",
    }


def build_stream(n: int) -> tuple[bytes, list[bytes]]:
    chunks: list[dict[str, object]] = [_chunk({"role": "assistant", "content": ""})]
    for i in range(n // 4):
        chunks.append(
            _chunk({"content": None, "reasoning_content": WORDS[i % 13] + " "})
        )
    for i in range(n // 2):
        chunks.append(_chunk({"content": WORDS[i % 13] + " "}))
    for index, name in enumerate(("read", "glob")):
        call = {
            "index": index,
            "id": f"call_{index}",
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        chunks.append(_chunk({"content": None, "tool_calls": [call]}))
        for i in range(n // 8):
            piece = {
                "index": index,
                "id": "",
                "type": "function",
                "function": {"arguments": json.dumps(WORDS[i % 13])[:-1]},
            }
            chunks.append(_chunk({"content": None, "tool_calls": [piece]}))
    chunks.append(_chunk({}, "tool_calls"))
    usage = _chunk({})
    usage["choices"] = []
    usage["usage"] = {
        "prompt_tokens": 1000,
        "completion_tokens": n,
        "total_tokens": n + 1000,
    }
    chunks.append(usage)
    payloads = [json.dumps(c, ensure_ascii=False).encode() for c in chunks]
    stream = b"".join(b"data: " + p + b"\n\n" for p in payloads) + b"data: [DONE]\n\n"
    return stream, payloads


@dataclass(frozen=True)
class Workload:
    """The stream translator against its floor, over one recorded-shape stream."""

    megabytes: float
    chunks: int
    floor: Callable[[], None]
    """``json.loads`` + ``json.dumps`` of every chunk: what any correct translator
    pays at least."""
    translate: Callable[[], None]
    """The whole stream through :class:`StreamTranslator`, 16 KiB at a time."""


def workload(chunks: int) -> Workload:
    stream, payloads = build_stream(chunks)
    request = translate_request({"model": "coder-model", "input": "hi", "stream": True})

    def floor() -> None:
        for payload in payloads:
            json.dumps(json.loads(payload))

    def translate() -> None:
        translator = StreamTranslator(request, now=0, ids=counter_ids())
        for start in range(0, len(stream), 16_384):
            translator.feed(stream[start : start + 16_384])
        translator.finish()
        assert translator.outcome.status == "completed", translator.outcome

    return Workload(len(stream) / 1e6, len(payloads), floor, translate)


def best_of(repeat: int, run: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    work = workload(args.chunks)
    megabytes = work.megabytes
    base = megabytes / best_of(args.repeat, work.floor)
    ours = megabytes / best_of(args.repeat, work.translate)
    print(f"input: {megabytes:.2f} MB in {work.chunks} chunks")
    print(f"baseline json.loads+json.dumps: {base:8.1f} MB/s")
    print(f"StreamTranslator:               {ours:8.1f} MB/s")
    print(f"ratio: {ours / base:.2f} (goal >= 0.5)")


if __name__ == "__main__":
    main()
