"""The real OpenCode CLI -> mitmdump with our addon -> the stand-in portal, offline.

``opencode-ai`` 1.18.33 (the version ``tests/fixtures/opencode-1.18.33-*`` were
captured from) is installed once into ``.cache/opencode``; each test runs
``opencode run --format json`` headless in a temp project whose ``opencode.json`` holds
the reference README's provider block (``@ai-sdk/openai``, so Responses API requests
to ``https://portal.qwen.ai/v1``, a placeholder ``apiKey``), with a temp
HOME/XDG tree, ``HTTPS_PROXY`` at a real ``mitmdump -s addon/qwen_addon.py`` and
``NODE_EXTRA_CA_CERTS`` at its CA. The addon swaps in one of two accounts' tokens
and sends Chat Completions to the stand-in portal on 127.0.0.1.

OpenCode's own network calls are stopped: ``OPENCODE_DISABLE_AUTOUPDATE``,
``OPENCODE_DISABLE_MODELS_FETCH``, ``OPENCODE_DISABLE_SHARE``, ``"share":
"disabled"``, and its start-up install of ``@opencode-ai/plugin`` from the npm
registry is pre-empted by a config folder that already lists it (see
``../shared/design/opencode-e2e.md``). ``NO_PROXY`` names only 127.0.0.1/localhost, so
every other request OpenCode made would show in the mitmdump log: the tests check
that the portal is the only host it asked for.

The stand-in answers text by itself; OpenCode's main request (the one that offers
tools) is answered with a scripted reply (:meth:`FakePortal.reply_with`): text, or a
``read`` tool call, whose result OpenCode sends back in its next request (answered
``The tool said: <result>``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.proxy.harness import Proxy, oauth_account, run_mitmdump, write_accounts

from qwen_oauth_mitm.oauth.fake_server import FakeQwenOAuth
from qwen_oauth_mitm.paths import StatePaths
from qwen_oauth_mitm.portal import FakePortal, PortalRequest, Text, ToolCall

from .npm_cache import ROOT, ensure_installed

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(240)]

OPENCODE_VERSION = "1.18.33"
DUMMY_KEY = "sk-opencode-placeholder-never-sent-upstream"
ANSWER = "Bonjour from the stand-in portal."
RUN_TIMEOUT = 60.0


# --- installing and configuring OpenCode --------------------------------------------


@pytest.fixture(scope="module")
def opencode() -> Path:
    folder = ensure_installed(
        ROOT / "tests" / "e2e" / "opencode",
        "opencode",
        postinstall=["node_modules/opencode-ai/postinstall.mjs"],
    )
    binary = folder / "node_modules" / ".bin" / "opencode"
    done = subprocess.run(
        [str(binary), "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(folder)},
    )
    assert done.stdout.strip() == OPENCODE_VERSION, done.stdout + done.stderr
    return binary


def project_config() -> dict[str, Any]:
    """``opencode.json`` as in the reference README, with a placeholder key."""
    return {
        "$schema": "https://opencode.ai/config.json",
        "autoupdate": False,
        "share": "disabled",
        "provider": {
            "qwen": {
                "npm": "@ai-sdk/openai",
                "options": {
                    "baseURL": "https://portal.qwen.ai/v1",
                    "apiKey": DUMMY_KEY,
                    "compatibility": "strict",
                },
                "models": {
                    "coder-model": {
                        "id": "coder-model",
                        "name": "Qwen Coder",
                        "limit": {"context": 1048576, "output": 65536},
                        "modalities": {"input": ["text", "image"], "output": ["text"]},
                        "attachment": True,
                    }
                },
            }
        },
    }


def _seed_plugin_package(config_dir: Path) -> None:
    """OpenCode installs ``@opencode-ai/plugin`` into its config folder at start
    (from the npm registry) unless that folder already lists it."""
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "node_modules").mkdir(exist_ok=True)
    deps = {"@opencode-ai/plugin": OPENCODE_VERSION}
    (config_dir / "package.json").write_text(json.dumps({"dependencies": deps}))
    lock = {
        "name": "opencode",
        "lockfileVersion": 3,
        "requires": True,
        "packages": {
            "": {"dependencies": deps},
            "node_modules/@opencode-ai/plugin": {"version": OPENCODE_VERSION},
        },
    }
    (config_dir / "package-lock.json").write_text(json.dumps(lock))


@dataclass
class Run:
    returncode: int
    events: list[dict[str, Any]]
    stdout: str
    stderr: str

    def texts(self) -> list[str]:
        return [str(e["part"]["text"]) for e in self.events if e.get("type") == "text"]

    def tool_uses(self) -> list[dict[str, Any]]:
        return [e["part"] for e in self.events if e.get("type") == "tool_use"]


@dataclass
class Setup:
    opencode: Path
    tmp: Path
    project: Path
    proxy: Proxy
    portal: FakePortal
    fake: FakeQwenOAuth

    def run(self, *words: str) -> Run:
        home = self.tmp / "oc-home"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_DATA_HOME": str(home / ".local" / "share"),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "XDG_STATE_HOME": str(home / ".local" / "state"),
            "PWD": str(self.project),  # OpenCode's project folder is $PWD
            "HTTPS_PROXY": f"http://127.0.0.1:{self.proxy.port}",
            "HTTP_PROXY": f"http://127.0.0.1:{self.proxy.port}",
            "NO_PROXY": "localhost,127.0.0.1",
            "NODE_EXTRA_CA_CERTS": str(self.proxy.confdir / "mitmproxy-ca-cert.pem"),
            "OPENCODE_DISABLE_AUTOUPDATE": "1",
            "OPENCODE_DISABLE_MODELS_FETCH": "1",
            "OPENCODE_DISABLE_SHARE": "1",
            "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
            "OPENCODE_DISABLE_CLAUDE_CODE": "1",
        }
        _seed_plugin_package(home / ".config" / "opencode")
        # Prompt words as separate arguments: one quoted argument would be sent
        # with its quotes.
        args = [str(self.opencode), "run", "--format", "json", "-m", "qwen/coder-model"]
        process = subprocess.Popen(
            [*args, *words],
            cwd=self.project,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=RUN_TIMEOUT)
        finally:
            _kill_group(process)
        events = [json.loads(line) for line in stdout.splitlines() if line.strip()]
        return Run(process.returncode, events, stdout, stderr)

    def hosts_asked(self) -> set[str]:
        """Every host mitmdump saw a request or connection for."""
        log = self.proxy.output()
        hosts = set(re.findall(r"https?://([^/:\s]+)", log))
        hosts |= set(re.findall(r"server connect ([^\s:()]+)", log))
        return hosts - {"127.0.0.1"}


def _kill_group(process: subprocess.Popen[str]) -> None:
    """OpenCode may leave helpers; end its whole process group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture
def setup(opencode: Path, tmp_path: Path, fake: FakeQwenOAuth) -> Iterator[Setup]:
    project = tmp_path / "project"
    project.mkdir()
    (project / "opencode.json").write_text(json.dumps(project_config(), indent=2))
    paths = StatePaths(tmp_path / "config" / "opencode")
    write_accounts(paths, [oauth_account(fake, "one"), oauth_account(fake, "two")])
    with (
        FakePortal(fake, text=ANSWER) as portal,
        run_mitmdump(tmp_path, fake, portal) as proxy,
    ):
        yield Setup(opencode, tmp_path, project, proxy, portal, fake)


# --- the stand-in's requests -------------------------------------------------------


def _tool_names(body: dict[str, Any]) -> list[str]:
    return [str(t.get("function", {}).get("name")) for t in body.get("tools") or []]


# --- checks -------------------------------------------------------------------------


def _assert_only_accounts_reached_the_portal(setup: Setup) -> None:
    assert setup.portal.requests
    for seen in setup.portal.requests:
        assert setup.fake.is_valid_access_token(seen.token)
        assert DUMMY_KEY not in json.dumps(dict(seen.headers))
        assert DUMMY_KEY not in json.dumps(dict(seen.body))
    assert DUMMY_KEY not in setup.proxy.output()
    assert setup.hosts_asked() <= {"portal.qwen.ai"}, setup.hosts_asked()


def _main_requests(portal: FakePortal) -> list[PortalRequest]:
    return [r for r in portal.requests if r.body.get("tools")]


def _describe(run: Run, setup: Setup) -> str:
    return (
        f"exit {run.returncode}\nstdout:\n{run.stdout[-3000:]}\n"
        f"stderr:\n{run.stderr[-3000:]}\nmitmdump:\n{setup.proxy.output()[-3000:]}"
    )


# --- tests --------------------------------------------------------------------------


def test_opencode_prints_the_portal_answer(setup: Setup) -> None:
    setup.portal.reply_with(Text(ANSWER))  # text, though tools are offered
    run = setup.run("Say", "hello")
    assert run.returncode == 0, _describe(run, setup)
    assert "".join(run.texts()) == ANSWER, _describe(run, setup)
    [main] = _main_requests(setup.portal)
    assert main.status == 200
    assert main.body["stream"] is True
    assert "read" in _tool_names(dict(main.body))
    user = [m for m in main.body["messages"] if m.get("role") == "user"]
    assert "Say hello" in json.dumps(user)
    assert setup.portal.pending_replies() == []  # the main request took it
    _assert_only_accounts_reached_the_portal(setup)


def test_opencode_runs_the_read_tool_the_portal_asks_for(setup: Setup) -> None:
    marker = f"marker-{os.urandom(6).hex()}"
    notes = setup.project / "notes.txt"
    notes.write_text(f"The secret word is {marker}.\n")
    setup.portal.reply_with(
        ToolCall("read", {"filePath": str(notes)}, id="call_read_1")
    )

    run = setup.run("Read", "the", "notes", "file")

    assert run.returncode == 0, _describe(run, setup)
    # OpenCode ran the tool and saw the file ...
    [tool] = run.tool_uses()
    assert tool["tool"] == "read"
    assert tool["state"]["status"] == "completed", tool
    assert tool["state"]["input"] == {"filePath": str(notes)}
    assert marker in tool["state"]["output"]
    # ... sent its result back in the next request (a Responses
    # function_call_output, which reaches the portal as a tool message) ...
    first, second = _main_requests(setup.portal)
    assert first.status == second.status == 200
    assert "read" in _tool_names(dict(first.body))  # the call was of a tool offered
    assert setup.portal.pending_replies() == []
    call = second.body["messages"][-2]
    result = second.body["messages"][-1]
    assert call["role"] == "assistant"
    assert call["tool_calls"][0]["id"] == "call_read_1"
    assert call["tool_calls"][0]["function"]["name"] == "read"
    assert result["role"] == "tool"
    assert result["tool_call_id"] == "call_read_1"
    assert marker in result["content"]
    # ... and printed the portal's answer to it.
    final = run.texts()[-1]
    assert final.startswith("The tool said:"), final
    assert marker in final
    _assert_only_accounts_reached_the_portal(setup)
