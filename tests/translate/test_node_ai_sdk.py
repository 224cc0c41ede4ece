"""The Vercel AI SDK (``@ai-sdk/openai`` 3.x, what OpenCode pins) over our output.

``npm ci`` installs ``tests/node/package.json`` into the git-ignored ``.cache/node``
once (a stamp of the package files makes later runs skip it); ``drive.mjs`` then runs
``streamText`` over every translated fixture stream and ``generateText`` over
translated non-stream answers, through a custom ``fetch``, for two pairings: the
versions OpenCode 1.18 pins and the newest 3.0.x.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

from qwen_oauth_mitm.translate import counter_ids, translate_request, translate_response

from .helpers import CASES, NOW, translate_chunks, upstream

ROOT = Path(__file__).resolve().parents[2]
NODE_SRC = ROOT / "tests" / "node"
NODE_DIR = ROOT / ".cache" / "node"
PACKAGE_FILES = ("package.json", "package-lock.json")
EXPECTED_VERSIONS = {
    "pinned": {"ai": "6.0.231", "openai": "3.0.88"},
    "latest": {"ai": "6.0.325", "openai": "3.0.141"},
}

pytestmark = pytest.mark.slow

_GENERATE: dict[str, dict[str, Any]] = {
    "text_and_reasoning": {
        "message": {"content": "Hello!", "reasoning_content": "Greet back."},
        "finish": "stop",
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    },
    "tool_call": {
        "message": {
            "content": None,
            "tool_calls": [
                {
                    "id": "call_g1",
                    "type": "function",
                    "function": {"name": "read", "arguments": '{"filePath":"/g"}'},
                }
            ],
        },
        "finish": "tool_calls",
        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
    },
}


def _install() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the AI SDK test")
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    for name in PACKAGE_FILES:
        digest.update((NODE_SRC / name).read_bytes())
    stamp = NODE_DIR / ".installed"
    with FileLock(str(NODE_DIR.parent / "node-install.lock")):
        fresh = (NODE_DIR / "node_modules").is_dir() and stamp.is_file()
        if not fresh or stamp.read_text() != digest.hexdigest():
            for name in PACKAGE_FILES:
                shutil.copyfile(NODE_SRC / name, NODE_DIR / name)
            subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
                cwd=NODE_DIR,
                check=True,
                capture_output=True,
                timeout=600,
            )
            stamp.write_text(digest.hexdigest())
        shutil.copyfile(NODE_SRC / "drive.mjs", NODE_DIR / "drive.mjs")
    return Path(node)


def _completion(spec: dict[str, Any]) -> dict[str, Any]:
    message = {"role": "assistant", **spec["message"]}
    choice = {"index": 0, "message": message, "finish_reason": spec["finish"]}
    return {"object": "chat.completion", "choices": [choice], "usage": spec["usage"]}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    node = _install()
    work = tmp_path_factory.mktemp("ai-sdk")
    for name in CASES:
        out, _ = translate_chunks([upstream(name)])
        (work / f"{name}.sse").write_bytes(b"".join(out))
    request = translate_request({"model": "coder-model", "input": "hi"})
    for name, spec in _GENERATE.items():
        body = translate_response(
            _completion(spec), request, ids=counter_ids(), now=NOW
        )
        (work / f"{name}.json").write_text(json.dumps(body))
    manifest = {"stream": sorted(CASES), "generate": sorted(_GENERATE)}
    (work / "manifest.json").write_text(json.dumps(manifest))
    done = subprocess.run(
        [str(node), "drive.mjs", str(work)],
        cwd=NODE_DIR,
        check=True,
        capture_output=True,
        timeout=120,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("pairing", sorted(EXPECTED_VERSIONS))
def test_versions(report: dict[str, Any], pairing: str) -> None:
    assert report[pairing]["versions"] == EXPECTED_VERSIONS[pairing]


def _usage(usage: dict[str, Any]) -> dict[str, int]:
    return {
        "input_tokens": usage["inputTokens"],
        "output_tokens": usage["outputTokens"],
        "cached_tokens": usage["inputTokenDetails"]["cacheReadTokens"],
        "reasoning_tokens": usage["outputTokenDetails"]["reasoningTokens"],
        "total_tokens": usage["totalTokens"],
    }


@pytest.mark.parametrize("pairing", sorted(EXPECTED_VERSIONS))
@pytest.mark.parametrize("name", sorted(CASES))
def test_stream_text(report: dict[str, Any], pairing: str, name: str) -> None:
    case = CASES[name]
    got = report[pairing]["results"][f"stream:{name}"]
    assert "thrown" not in got, got
    assert got["text"] == case["text"]
    assert got["reasoning"] == case["reasoning"]
    assert got["toolCalls"] == [
        {"id": c["call_id"], "name": c["name"], "input": json.loads(c["arguments"])}
        for c in case["tool_calls"]
    ]
    if case["status"] == "failed":
        (error,) = got["errors"]
        if case["error_message"]:
            assert error["message"] == case["error_message"]
        if "ai_http_status" in case:
            # An error before any output makes the SDK throw a retryable API error.
            assert error["statusCode"] == case["ai_http_status"]
            assert got["finish"] is None
        else:
            assert got["finish"]["reason"] == "error"
        return
    assert got["errors"] == []
    assert got["finish"]["reason"] == case["ai_finish"]
    assert _usage(got["finish"]["usage"]) == case["usage"]
    # The SDK's own request must translate.
    (sent,) = got["requests"]
    assert sent["url"] == "http://portal.invalid/v1/responses"
    chat = translate_request(sent["body"]).chat
    assert [t["function"]["name"] for t in chat["tools"]] == ["read", "glob"]
    assert chat["messages"][0]["role"] == "system"


@pytest.mark.parametrize("pairing", sorted(EXPECTED_VERSIONS))
def test_generate_text(report: dict[str, Any], pairing: str) -> None:
    results = report[pairing]["results"]
    text = results["generate:text_and_reasoning"]
    assert (text["text"], text["reasoning"]) == ("Hello!", "Greet back.")
    assert text["finish"]["reason"] == "stop"
    assert text["finish"]["usage"]["totalTokens"] == 10
    call = results["generate:tool_call"]
    assert call["toolCalls"] == [
        {"id": "call_g1", "name": "read", "input": {"filePath": "/g"}}
    ]
    assert call["finish"]["reason"] == "tool-calls"
    assert call["finish"]["usage"]["inputTokens"] == 9
