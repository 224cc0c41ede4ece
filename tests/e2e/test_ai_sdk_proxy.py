"""The Vercel AI SDK over the real proxy: Node -> mitmdump with our addon -> stand-in.

``tests/e2e/node`` pins ``ai`` 6.0.231 and ``@ai-sdk/openai`` 3.0.88 (what OpenCode
1.18.33 pins) plus ``undici`` for its ``ProxyAgent`` (Node 20's own fetch ignores
``HTTPS_PROXY``); they are installed once into ``.cache/e2e-node``
(``tests/node``'s install has no direct ``undici``). ``stream_tool.mjs`` calls
``streamText`` with one tool against ``https://portal.qwen.ai/v1`` through the
proxy, trusting its CA through ``NODE_EXTRA_CA_CERTS``. The stand-in portal answers
a request offering tools with a call of the first tool (``{"city": "Paris"}``) and
a tool result with ``The tool said: <result>``, so the SDK runs two steps.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.proxy.harness import oauth_account, run_mitmdump, write_accounts

from qwen_oauth_mitm.oauth.fake_server import FakeQwenOAuth
from qwen_oauth_mitm.paths import StatePaths
from qwen_oauth_mitm.portal import FakePortal

from .npm_cache import ROOT, ensure_installed, node_and_npm

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(180)]

SOURCE = ROOT / "tests" / "e2e" / "node"
EXPECTED_VERSIONS = {"ai": "6.0.231", "@ai-sdk/openai": "3.0.88"}
PLACEHOLDER = "sk-ai-sdk-placeholder"


@pytest.fixture(scope="module")
def node_dir() -> Path:
    folder = ensure_installed(SOURCE, "e2e-node")
    shutil.copyfile(SOURCE / "stream_tool.mjs", folder / "stream_tool.mjs")
    return folder


@pytest.fixture
def portal(fake: FakeQwenOAuth) -> Iterator[FakePortal]:
    with FakePortal(fake) as p:
        yield p


@pytest.fixture
def report(
    node_dir: Path, tmp_path: Path, fake: FakeQwenOAuth, portal: FakePortal
) -> dict[str, Any]:
    node, _ = node_and_npm()
    paths = StatePaths(tmp_path / "config" / "opencode")
    write_accounts(paths, [oauth_account(fake, "one"), oauth_account(fake, "two")])
    with run_mitmdump(tmp_path, fake, portal) as proxy:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path),
            "NODE_EXTRA_CA_CERTS": str(proxy.confdir / "mitmproxy-ca-cert.pem"),
        }
        process = subprocess.Popen(
            [str(node), "stream_tool.mjs", f"http://127.0.0.1:{proxy.port}"],
            cwd=node_dir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        assert process.returncode == 0, f"{stdout}\n{stderr}\n{proxy.output()}"
        result: dict[str, Any] = json.loads(stdout)
        result["mitmdump_log"] = proxy.output()
    return result


def test_versions(node_dir: Path) -> None:
    for name, version in EXPECTED_VERSIONS.items():
        meta = node_dir / "node_modules" / name / "package.json"
        assert json.loads(meta.read_text())["version"] == version


def test_stream_text_with_a_tool_through_the_proxy(
    report: dict[str, Any], portal: FakePortal, fake: FakeQwenOAuth
) -> None:
    assert report["errors"] == []
    # Step 1: the tool call, run by the SDK.
    [call] = report["toolCalls"]
    assert call["name"] == "weather"
    assert call["input"] == {"city": "Paris"}
    assert call["id"] == "call_fake_1"
    assert report["toolResults"] == [{"id": call["id"], "output": "sunny in Paris"}]
    # Step 2: the answer to the tool result.
    assert report["text"] == "The tool said: sunny in Paris"
    step_usage = {"inputTokens": 11, "outputTokens": 7, "totalTokens": 18}
    assert [s["reason"] for s in report["steps"]] == ["tool-calls", "stop"]
    for step in report["steps"]:
        assert {k: step["usage"][k] for k in step_usage} == step_usage
    assert report["finish"]["reason"] == "stop"
    usage = report["finish"]["usage"]
    assert (usage["inputTokens"], usage["outputTokens"], usage["totalTokens"]) == (
        22,
        14,
        36,
    )


def test_the_tool_result_goes_back_as_function_call_output(
    report: dict[str, Any], portal: FakePortal
) -> None:
    first, second = report["requests"]
    for sent in (first, second):
        assert sent["url"] == "https://portal.qwen.ai/v1/responses"
        assert sent["body"]["stream"] is True
        assert [t["name"] for t in sent["body"]["tools"]] == ["weather"]
    [output] = [
        i for i in second["body"]["input"] if i.get("type") == "function_call_output"
    ]
    assert output["call_id"] == "call_fake_1"
    # What the stand-in received: the Chat Completions translation of both.
    assert len(portal.requests) == 2
    assert all(r.status == 200 for r in portal.requests)
    assert portal.requests[1].body["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "call_fake_1",
        "content": "sunny in Paris",
    }


def test_the_placeholder_key_never_reaches_the_portal(
    report: dict[str, Any], portal: FakePortal, fake: FakeQwenOAuth
) -> None:
    assert {r["authorization"] for r in report["requests"]} == {f"Bearer {PLACEHOLDER}"}
    for seen in portal.requests:
        assert fake.is_valid_access_token(seen.token)
        assert PLACEHOLDER not in json.dumps(dict(seen.headers))
    assert PLACEHOLDER not in report["mitmdump_log"]
