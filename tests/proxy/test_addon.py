"""The addon's hooks under mitmproxy's test context (no network)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mitmproxy import ctx, exceptions, http
from mitmproxy.test import taddons, tflow, tutils

from qwen_oauth_mitm import redact
from qwen_oauth_mitm.config import leaf_types
from qwen_oauth_mitm.paths import StatePaths
from qwen_oauth_mitm.proxy import outbox as outbox_module
from qwen_oauth_mitm.proxy.addon import QwenAddon
from qwen_oauth_mitm.proxy.jobs import Attempt
from qwen_oauth_mitm.proxy.options import HELP
from qwen_oauth_mitm.proxy.outbox import HEAD_WAIT

from .test_forward import Recorder


def _flow(
    host: str = "portal.qwen.ai",
    path: str = "/v1/responses",
    body: bytes = b"",
    method: str = "POST",
    authorization: str = "Bearer dummy",
) -> http.HTTPFlow:
    headers = http.Headers(
        host=host,
        authorization=authorization,
        cookie="c=1",
        content_type="application/json",
        content_length=str(len(body)),
    )
    req = tutils.treq(
        host=host,
        port=443,
        scheme=b"https",
        method=method.encode(),
        path=path.encode(),
        headers=headers,
        content=body,
    )
    return tflow.tflow(req=req)


@pytest.fixture
def addon(tmp_path: Path) -> QwenAddon:
    return QwenAddon(StatePaths(tmp_path / "opencode"))


@pytest.fixture
async def running(addon: QwenAddon) -> AsyncIterator[QwenAddon]:
    with taddons.context(addon) as tctx:  # type: ignore[no-untyped-call]
        tctx.configure(addon, qwen_proactive_refresh="false")
        await addon.running()
        try:
            yield addon
        finally:
            await addon.done()


CHAT = b'{"model":"m","messages":[]}'


async def _started(addon: QwenAddon) -> tuple[http.HTTPFlow, asyncio.Task[None]]:
    """A chat flow through the ``request`` hook, and the job task it started."""
    f = _flow(path="/v1/chat/completions", body=CHAT)
    await addon.request(f)
    task = addon.jobs[f.id].task
    assert task is not None
    return f, task


def _error(flow: http.HTTPFlow) -> dict[str, object]:
    assert flow.response is not None
    err = json.loads(flow.response.content or b"")["error"]
    assert isinstance(err, dict)
    return err


class TestOptions:
    async def test_every_config_key_is_an_option(self, addon: QwenAddon) -> None:
        with taddons.context(addon) as tctx:  # type: ignore[no-untyped-call]
            assert tctx.options.qwen_rotation_strategy is None
            assert tctx.options.qwen_health_score_initial is None
            assert tctx.options.qwen_timeouts_connect_seconds is None
            tctx.configure(
                addon,
                qwen_health_score_initial=90,
                qwen_timeouts_connect_seconds="2.5",
                qwen_quiet_mode="yes",
            )
            assert addon.config is not None
            assert addon.config.health_score.initial == 90
            assert addon.config.timeouts.connect_seconds == 2.5
            assert addon.config.quiet_mode is True

    async def test_a_bad_value_is_an_options_error(self, addon: QwenAddon) -> None:
        with taddons.context(addon) as tctx:  # type: ignore[no-untyped-call]
            tctx.configure(addon, qwen_quiet_mode="false")  # started
            with pytest.raises(exceptions.OptionsError, match="rotation_strategy"):
                tctx.configure(addon, qwen_rotation_strategy="bogus")
            with pytest.raises(exceptions.OptionsError, match="expected a number"):
                tctx.configure(addon, qwen_timeouts_connect_seconds="soon")

    async def test_a_bad_value_at_startup_is_one_error_line_and_no_service(
        self, addon: QwenAddon, caplog: pytest.LogCaptureFixture
    ) -> None:
        with taddons.context(addon) as tctx:  # type: ignore[no-untyped-call]
            tctx.configure(addon, qwen_rotation_strategy="bogus")
        [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert "rotation_strategy" in record.getMessage()
        assert record.exc_info is None
        f = _flow(body=b'{"model":"m","input":"hi"}')
        addon.relay_port = 1
        await addon.request(f)  # refused, not served with the defaults
        assert f.response is not None
        assert f.response.status_code == 503
        assert b"rotation_strategy" in (f.response.content or b"")
        assert f.request.headers["authorization"] == "Bearer dummy"


class TestScope:
    async def test_other_hosts_pass_through_untouched(self, running: QwenAddon) -> None:
        f = _flow(host="example.com", body=b"{not json")
        before = f.request.get_state()  # type: ignore[no-untyped-call]
        await running.request(f)
        assert f.response is None
        after = f.request.get_state()  # type: ignore[no-untyped-call]
        assert after == before
        assert f.request.headers["authorization"] == "Bearer dummy"

    async def test_other_paths_on_the_portal_get_404(self, running: QwenAddon) -> None:
        f = _flow(path="/v1/files", method="GET")
        await running.request(f)
        assert f.response is not None
        assert f.response.status_code == 404
        assert f.marked

    async def test_models_are_answered_locally(self, running: QwenAddon) -> None:
        f = _flow(path="/v1/models", method="GET")
        await running.request(f)
        assert f.response is not None
        assert f.response.status_code == 200
        ids = [m["id"] for m in json.loads(f.response.content or b"")["data"]]
        assert ids == ["coder-model"]


class TestBadRequests:
    async def test_malformed_json_is_400(self, running: QwenAddon) -> None:
        f = _flow(body=b"{not json")
        await running.request(f)
        assert f.response is not None
        assert f.response.status_code == 400
        assert "not valid JSON" in str(_error(f)["message"])
        assert f.request.host == "portal.qwen.ai"
        assert running.jobs == {}

    async def test_untranslatable_body_is_400(self, running: QwenAddon) -> None:
        f = _flow(body=json.dumps({"model": "coder-model"}).encode())
        await running.request(f)
        assert f.response is not None
        assert f.response.status_code == 400
        assert _error(f)["param"] == "input"

    async def test_chat_body_must_be_an_object(self, running: QwenAddon) -> None:
        f = _flow(path="/v1/chat/completions", body=b"[1]")
        await running.request(f)
        assert f.response is not None
        assert f.response.status_code == 400


class TestRelayRewrite:
    async def test_responses_request_goes_to_the_relay(
        self, running: QwenAddon
    ) -> None:
        body = {"model": "coder-model", "input": "hi", "stream": True}
        f = _flow(body=json.dumps(body).encode())
        await running.request(f)
        assert f.response is None
        assert (f.request.scheme, f.request.host) == ("http", "127.0.0.1")
        assert f.request.port == running.relay_port
        assert f.request.path == f"/{f.id}"
        assert "authorization" not in f.request.headers
        assert "cookie" not in f.request.headers
        job = running.jobs[f.id]
        assert job.kind == "responses"
        assert job.stream
        assert job.chat_body["messages"] == [{"role": "user", "content": "hi"}]
        assert f.metadata["qwen"]["responses_request"] == body

    @pytest.mark.parametrize(
        ("strategy", "affinity", "keyed"),
        [
            ("hybrid", "true", True),
            ("hybrid", "false", False),
            ("sequential", "true", False),
            ("round-robin", "true", False),
        ],
    )
    @pytest.mark.parametrize("path", ["/v1/responses", "/v1/chat/completions"])
    async def test_a_conversation_key_only_where_the_pick_uses_one(
        self, running: QwenAddon, strategy: str, affinity: str, keyed: bool, path: str
    ) -> None:
        ctx.options.update(  # type: ignore[no-untyped-call]  # the config follows
            qwen_rotation_strategy=strategy, qwen_conversation_affinity=affinity
        )
        body: dict[str, object] = {"model": "m", "prompt_cache_key": "conv-1"}
        if path == "/v1/responses":
            body["input"] = "hi"
        else:
            body["messages"] = []
        f = _flow(path=path, body=json.dumps(body).encode())
        await running.request(f)
        job = running.jobs[f.id]
        assert job.conversation_key == ("pck:conv-1" if keyed else None)
        job.cancel()

    async def test_streaming_is_switched_on_for_relayed_flows(
        self, running: QwenAddon
    ) -> None:
        body = b'{"model":"m","messages":[],"stream":true}'
        f = _flow(path="/v1/chat/completions", body=body)
        await running.request(f)
        job = running.jobs[f.id]
        assert job.task is not None
        assert job.outbox is not None
        job.task.cancel()  # this test writes to its outbox itself
        f.response = tutils.tresp()
        running.responseheaders(f)
        assert f.response.stream is True
        # The job was told: its first bytes need not wait for the head.
        job.outbox.attach(Recorder())
        await asyncio.wait_for(job.outbox.write(b"first"), HEAD_WAIT / 2)
        running.response(f)
        assert f.id not in running.jobs
        assert f.comment.startswith("qwen")

    async def test_the_job_runs_before_the_relay_connection_arrives(
        self, running: QwenAddon
    ) -> None:
        f, task = await _started(running)
        job = running.jobs[f.id]
        for _ in range(50):  # no account: the job knows its answer at once
            if job.status is not None:
                break
            await asyncio.sleep(0.01)
        assert job.status == 429
        assert not task.done()  # it waits for the relay to carry it out
        out = Recorder()
        await asyncio.wait_for(running._serve_relay(f"/{f.id}", out), 2)
        assert out.status == 429
        assert "account" in out.json()["error"]["message"]
        assert task.done()

    async def test_a_flow_that_fails_before_the_relay_cancels_its_job(
        self, running: QwenAddon
    ) -> None:
        f, task = await _started(running)
        running.error(f)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert running.jobs == {}

    async def test_a_flow_answered_without_the_relay_cancels_its_job(
        self, running: QwenAddon
    ) -> None:
        f, task = await _started(running)
        f.response = tutils.tresp()  # another addon answered it
        running.response(f)
        with pytest.raises(asyncio.CancelledError):
            await task

    async def test_an_intercepted_flow_is_served_only_once_it_reaches_the_relay(
        self, running: QwenAddon
    ) -> None:
        f = _flow(path="/v1/chat/completions", body=CHAT)
        f.intercept()  # type: ignore[no-untyped-call]  # held in mitmweb
        await running.request(f)
        job = running.jobs[f.id]
        assert job.task is None
        out = Recorder()
        await asyncio.wait_for(running._serve_relay(f"/{f.id}", out), 2)
        assert out.status == 429  # served then (no account here)

    async def test_a_job_that_gave_up_on_its_relay_connection_answers_504(
        self, running: QwenAddon, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(outbox_module, "ATTACH_WAIT", 0.05)
        f, task = await _started(running)
        await asyncio.wait_for(task, 2)  # it waited for the relay, then gave up
        out = Recorder()
        await asyncio.wait_for(running._serve_relay(f"/{f.id}", out), 2)
        assert out.status == 504
        assert "too late" in out.json()["error"]["message"]

    async def test_whole_answers_stay_buffered(self, running: QwenAddon) -> None:
        f = _flow(path="/v1/chat/completions", body=b'{"model":"m","messages":[]}')
        await running.request(f)
        f.response = tutils.tresp()
        running.responseheaders(f)
        assert f.response.stream is False

    async def test_a_hook_failure_answers_instead_of_passing_through(
        self, running: QwenAddon, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def boom(*_: object) -> None:
            raise RuntimeError("kaputt")

        monkeypatch.setattr(running, "_route", boom)
        f = _flow(body=b"{}")
        await running.request(f)
        assert f.response is not None
        assert f.response.status_code == 502
        assert f.marked

    async def test_with_no_valid_config_only_qwen_flows_are_refused(
        self, running: QwenAddon
    ) -> None:
        """A configuration that never loaded (a reloaded script, say) must not
        break the flows of every other host: only Qwen's get the reason."""
        running.config = None
        running._config_error = "timeouts.connect_seconds: bad"
        other = _flow(host="example.com", body=b"{}")
        running.requestheaders(other)
        await running.request(other)
        assert other.response is None
        assert other.error is None
        assert other.request.host == "example.com"
        assert other.request.headers["authorization"] == "Bearer dummy"
        ours = _flow(body=b"{}")
        running.requestheaders(ours)
        await running.request(ours)
        assert ours.response is not None
        assert ours.response.status_code == 503
        assert b"timeouts.connect_seconds" in (ours.response.content or b"")
        assert ours.request.host == "portal.qwen.ai"  # never relayed

    async def test_a_failing_scope_check_answers_too(
        self, running: QwenAddon, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def boom(*_: object) -> bool:
            raise RuntimeError("kaputt")

        monkeypatch.setattr("qwen_oauth_mitm.proxy.addon.is_intercepted", boom)
        f = _flow(body=b"{}")
        await running.request(f)
        assert f.response is not None
        assert f.response.status_code == 502
        assert f.request.headers["authorization"] == "Bearer dummy"  # never sent


class TestRepeatedSet:
    """mitmproxy 12.3 drops a script silently when a deferred ``--set`` value of
    one of its options cannot be parsed; the addon defuses those values."""

    async def test_a_repeated_or_unparsable_option_is_reported_not_fatal(
        self, addon: QwenAddon, caplog: pytest.LogCaptureFixture
    ) -> None:
        with taddons.context() as tctx:  # type: ignore[no-untyped-call]
            tctx.options.set(
                "qwen_debug=false",
                "qwen_debug=false",
                "qwen_refresh_window_seconds=2.5",
                "qwen_max_rate_limit_wait_seconds=7",
                "qwen_quiet_mode=true",
                defer=True,
            )
            # Without the guard, mitmproxy's process_deferred raises here.
            tctx.master.addons.add(addon)
            assert tctx.options.qwen_quiet_mode == "true"
            assert tctx.options.qwen_max_rate_limit_wait_seconds == 7
            assert tctx.options.qwen_debug is None
            assert tctx.options.qwen_refresh_window_seconds is None
            assert not tctx.options.deferred
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 2
        assert errors[0].startswith(
            "--set qwen_debug was given 2 times (false, false); give it once."
        )
        assert errors[1].startswith(
            "--set qwen_refresh_window_seconds=2.5: not a whole number."
        )

    async def test_other_deferred_options_are_left_alone(
        self, addon: QwenAddon, caplog: pytest.LogCaptureFixture
    ) -> None:
        with taddons.context() as tctx:  # type: ignore[no-untyped-call]
            tctx.options.set("other_x=1", "other_x=2", "qwen_debug=", defer=True)
            tctx.master.addons.add(addon)
            assert set(tctx.options.deferred) == {"other_x"}
        assert not [r for r in caplog.records if r.levelname == "ERROR"]


class TestTimeouts:
    async def test_a_timeout_changed_at_run_time_reaches_the_forwarder(
        self, running: QwenAddon
    ) -> None:
        client = running.forwarder.http if running.forwarder else None
        with taddons.context(running) as tctx:  # type: ignore[no-untyped-call]
            tctx.configure(
                running,
                qwen_timeouts_first_byte_seconds="0.5",
                qwen_timeouts_between_chunks_seconds="2",
                qwen_timeouts_connect_seconds="3",
            )
        assert running.forwarder is not None
        t = running.forwarder.config.timeouts
        assert (t.first_byte_seconds, t.between_chunks_seconds) == (0.5, 2)
        assert t.connect_seconds == 3
        assert running.forwarder.http is client  # per-request timeouts: no rebuild


class TestInspection:
    async def test_comment_marks_and_metadata_after_a_failover(
        self, running: QwenAddon
    ) -> None:
        f = _flow(path="/v1/chat/completions", body=b'{"model":"m","messages":[]}')
        await running.request(f)
        job = running.jobs[f.id]
        job.attempts += [Attempt("home", "429"), Attempt("work", "200")]
        job.served_by, job.status = "work", 200
        f.response = tutils.tresp()
        running.response(f)
        assert f.comment == "qwen · acct work · chat · failover from acct home (429)"
        assert not f.marked
        assert f.metadata["qwen"]["attempts"] == [["home", "429"], ["work", "200"]]
        assert f.metadata["qwen"]["served_by"] == "work"
        json.dumps(f.metadata)  # plain data only

    async def test_a_failed_job_marks_the_flow(self, running: QwenAddon) -> None:
        f = _flow(path="/v1/chat/completions", body=b'{"model":"m","messages":[]}')
        await running.request(f)
        job = running.jobs[f.id]
        job.attempts.append(Attempt("home", "429"))
        job.failed, job.error, job.status = True, "No Qwen account can serve", 429
        f.response = tutils.tresp()
        running.response(f)
        assert f.marked
        assert "tried acct home (429)" in f.comment
        assert "failed: No Qwen account" in f.comment

    async def test_a_cut_stream_marks_the_flow(self, running: QwenAddon) -> None:
        f = _flow(path="/v1/chat/completions", body=b'{"model":"m","messages":[]}')
        await running.request(f)
        running.error(f)
        assert f.marked
        assert f.comment.endswith("stream cut")
        assert running.jobs == {}

    async def test_accounts_command_logs_the_table(
        self, running: QwenAddon, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, "qwen_oauth_mitm")
        with taddons.context(running) as tctx:  # type: ignore[no-untyped-call]
            tctx.command(running.accounts_command)
        await asyncio.sleep(0.05)
        assert "no accounts; add one with `qwen-oauth login`" in caplog.text

    async def test_quiet_mode_drops_info(self, addon: QwenAddon) -> None:
        with taddons.context(addon) as tctx:  # type: ignore[no-untyped-call]
            tctx.configure(addon, qwen_quiet_mode="true")
            assert logging.getLogger("qwen_oauth_mitm").level == logging.WARNING
            tctx.configure(addon, qwen_quiet_mode="false", qwen_debug="1")
            assert logging.getLogger("qwen_oauth_mitm").level == logging.DEBUG


class TestLogging:
    async def test_http_library_chatter_is_not_logged(self, addon: QwenAddon) -> None:
        """mitmproxy makes every record an event for every addon on the loop:
        httpcore's ten debug records per request cost more than all our work."""
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.DEBUG)  # as mitmproxy sets it
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.NOTSET)
        try:
            with taddons.context(addon) as tctx:  # type: ignore[no-untyped-call]
                tctx.configure(addon, qwen_debug="1")  # even when debugging ours
                for name in ("httpx", "httpcore.http11", "httpcore.connection"):
                    assert not logging.getLogger(name).isEnabledFor(logging.INFO)
                    assert logging.getLogger(name).isEnabledFor(logging.WARNING)
        finally:
            root.setLevel(level)

    async def test_log_file_is_redacted(self, addon: QwenAddon, tmp_path: Path) -> None:
        path = tmp_path / "qwen.log"
        secret = "fake-at-" + "s3cr3t" * 4
        redact.register(secret)
        with taddons.context(addon) as tctx:  # type: ignore[no-untyped-call]
            tctx.configure(addon, qwen_log_file=str(path))
            logging.getLogger("qwen_oauth_mitm.proxy").warning("token %s", secret)
            tctx.configure(addon, qwen_log_file="")  # closes the file handler
        text = path.read_text()
        assert "token " in text
        assert secret not in text

    async def test_reload_and_refresh_commands_run(
        self, running: QwenAddon, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, "qwen_oauth_mitm")
        with taddons.context(running) as tctx:  # type: ignore[no-untyped-call]
            tctx.command(running.reload_command)
            tctx.command(running.refresh_command)
        await asyncio.sleep(0.05)
        assert "no accounts" in caplog.text
        assert "Addon error" not in caplog.text

    async def test_an_unwritable_log_file_is_an_options_error(
        self, addon: QwenAddon, tmp_path: Path
    ) -> None:
        bad = str(tmp_path / "no" / "x.log")
        with taddons.context(addon) as tctx:  # type: ignore[no-untyped-call]
            tctx.configure(addon, qwen_quiet_mode="false")  # started
            with pytest.raises(exceptions.OptionsError, match="cannot open log_file"):
                tctx.configure(addon, qwen_log_file=bad)

    async def test_reload_keeps_the_config_when_the_file_is_bad(
        self, running: QwenAddon, caplog: pytest.LogCaptureFixture
    ) -> None:
        before = running.config
        running.paths.config_dir.mkdir(parents=True, exist_ok=True)
        running.paths.user_config.write_text('{"rotation_strategy": "bogus"}')
        with taddons.context(running) as tctx:  # type: ignore[no-untyped-call]
            tctx.command(running.reload_command)
        assert running.config is before
        assert "config not reloaded" in caplog.text


def test_every_option_has_its_own_help() -> None:
    assert set(HELP) == set(leaf_types())
