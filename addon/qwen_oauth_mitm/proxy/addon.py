"""The mitmproxy addon: ``mitmdump -s addon/qwen_addon.py``.

A thin shell. Hooks:

- ``load``/``configure``: the ``qwen_*`` options (see :mod:`.options`) are the top
  config layer; a bad value is an ``OptionsError`` (mitmdump exits, saying why).
- ``running``/``done``: start and stop the relay (:mod:`.relay`), the upstream
  client, the token manager and the proactive refresh; save the tracker state.
- ``requestheaders``: a ``POST`` to the Qwen API whose body is larger than
  ``max_request_body_mb``, or of unknown length, is streamed instead of buffered
  (:mod:`.bodylimit`); a too large one gets a 413.
- ``request``: only flows to the Qwen API host(s) are touched (:mod:`.scope`).
  ``GET /v1/models`` is answered here; ``POST /v1/responses`` is translated and
  ``POST /v1/chat/completions`` kept, and both are rewritten to the relay. The
  job starts here, in a task (pick the account, swap the token, send upstream,
  fail over: :mod:`.forward`), while mitmproxy carries the flow to the relay,
  which only writes the answer out (:mod:`.outbox`). Anything else on those
  hosts gets a 404: a flow never reaches the real portal with the client's own
  (dummy) key.
- ``responseheaders``: relayed answers stream (``stream = True``), so events reach
  the client as the relay produces them; the job learns that its head was taken.
- ``response``/``error``: ``flow.comment`` says which account served and what was
  tried; failed flows are marked.

Every hook catches its exceptions and answers with a Responses-shaped error:
mitmproxy would otherwise log "Addon error" and let the flow through unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from mitmproxy import command, ctx, exceptions, http

from qwen_oauth_mitm import redact
from qwen_oauth_mitm.config import Config, load_config, parse_timezone
from qwen_oauth_mitm.errors import ConfigError
from qwen_oauth_mitm.oauth import OAuthClient, TokenManager
from qwen_oauth_mitm.oauth.tokens import refresh_http_seconds, refresh_lock_seconds
from qwen_oauth_mitm.paths import StatePaths, default_paths
from qwen_oauth_mitm.proxy import options
from qwen_oauth_mitm.proxy.bodylimit import MIB, BodyCollector, declared_length
from qwen_oauth_mitm.proxy.forward import Forwarder
from qwen_oauth_mitm.proxy.jobs import MODELS_BODY, Job, Kind, error_body
from qwen_oauth_mitm.proxy.logs import LogSetup
from qwen_oauth_mitm.proxy.outbox import Outbox
from qwen_oauth_mitm.proxy.relay import Relay, ResponseWriter
from qwen_oauth_mitm.proxy.scope import is_intercepted
from qwen_oauth_mitm.proxy.upstream import UpstreamClient
from qwen_oauth_mitm.rotation import (
    Rotation,
    TrackerStore,
    render_status_table,
    tracker_file,
)
from qwen_oauth_mitm.store import accounts_file
from qwen_oauth_mitm.tasks import spawn
from qwen_oauth_mitm.translate import (
    TranslationError,
    chat_conversation_key,
    check_chat_request,
    conversation_key,
    parse_body,
    translate_request,
)

log = logging.getLogger("qwen_oauth_mitm.proxy")
PROACTIVE_INTERVAL = 60.0
SHUTDOWN_REFRESH_WAIT = 10.0
"""Seconds shutdown waits for token refreshes in flight to end and save: one cut
short after the server rotated the refresh token would cost the account its login."""
FAILED_MARK = ":x:"
API_PATHS = ("/v1/responses", "/v1/chat/completions")


class QwenAddon:
    """The addon object mitmproxy loads (one per process)."""

    def __init__(self, paths: StatePaths | None = None) -> None:
        self._paths = paths
        self.config: Config | None = None
        self._default: Config | None = None
        self._config_error: str | None = None
        """Why the config did not load at startup (mitmproxy then exits)."""
        self.jobs: dict[str, Job] = {}
        """Relayed flows by ``flow.id``, until their response or error hook."""
        self._streamed: dict[str, tuple[str, BodyCollector]] = {}
        """Flows whose body a collector takes (see ``requestheaders``): API path."""
        self.relay = Relay(self._serve_relay)
        self.relay_port: int | None = None
        self.forwarder: Forwarder | None = None
        self._http: UpstreamClient | None = None
        self._oauth: OAuthClient | None = None
        self._tracker: TrackerStore | None = None
        self._background: list[asyncio.Task[Any]] = []
        self._logs = LogSetup()

    @property
    def paths(self) -> StatePaths:
        if self._paths is None:
            self._paths = default_paths()
        return self._paths

    # --- options ----------------------------------------------------------------

    def load(self, loader: Any) -> None:
        try:
            options.guard_deferred(loader.master.options)
        except Exception:
            log.exception("cannot check the --set qwen_* options")
        options.register(loader)

    def configure(self, updated: set[str]) -> None:
        if not any(name.startswith(options.PREFIX) for name in updated):
            return
        try:
            loaded = load_config(
                user_file=self.paths.user_config,
                cwd=Path.cwd(),
                options=options.set_options(ctx.options),
            )
            self._logs.apply(loaded.config)
        except ConfigError as e:
            reason = str(e).replace("\n", "; ")
            if self.config is None and self.forwarder is None:
                # At startup an OptionsError is printed with a traceback, after
                # which mitmproxy exits anyway (any error logged during startup
                # ends it): one line says the same. The hooks refuse to serve
                # with a config that never loaded (see _config).
                self._config_error = reason
                log.error("Qwen proxy: bad configuration: %s", reason)
                return
            raise exceptions.OptionsError(reason) from None  # type: ignore[no-untyped-call]
        self._config_error = None
        for warning in loaded.warnings:
            log.warning("%s", warning)
        self.config = loaded.config
        if self.forwarder is not None:
            self.forwarder.config = loaded.config
            self.forwarder.rotation.reconfigure(loaded.config)
            self.forwarder.tokens.refresh_window_seconds = (
                loaded.config.refresh_window_seconds
            )

    # --- lifecycle --------------------------------------------------------------

    async def running(self) -> None:
        redact.install_redaction()
        cfg = self._config()
        paths = self.paths
        self._tracker = TrackerStore(tracker_file(paths.tracker_state))
        rotation = Rotation(cfg, self._tracker.load(), pid=os.getpid())
        self._oauth = OAuthClient(
            cfg.oauth_base_url,
            cfg.client_id,
            # Requests wait only refresh_seconds for a refresh; the refresh itself
            # is not cut that early (it may have rotated the refresh token).
            timeout=refresh_http_seconds(cfg.timeouts.refresh_seconds),
            user_agent=cfg.upstream_headers.user_agent,
            trust_env=False,
        )
        tokens = TokenManager(
            accounts_file(paths.accounts),
            self._oauth,
            refresh_window_seconds=cfg.refresh_window_seconds,
            lock_timeout=refresh_lock_seconds(cfg.timeouts.refresh_seconds),
        )
        # Timeouts go with each request (those of the config of the moment):
        # the client never needs rebuilding when they change.
        self._http = UpstreamClient()
        self.forwarder = Forwarder(cfg, rotation, tokens, self._tracker, self._http)
        self.relay_port = await self.relay.start()
        log.info("qwen relay listening on 127.0.0.1:%d", self.relay_port)
        if cfg.proactive_refresh:
            self._background.append(
                spawn(self._proactive_refresh(), name="qwen proactive refresh")
            )

    async def done(self) -> None:
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(BaseException):
                await task
        self._background = []
        for job in self.jobs.values():
            job.cancel()
        await self.relay.stop()
        self.relay_port = None
        if self.forwarder is not None:
            try:
                await self.forwarder.tokens.settle(SHUTDOWN_REFRESH_WAIT)
            except Exception as e:  # the rest of the shutdown must happen anyway
                log.warning("waiting for token refreshes failed: %s", e)
        if self.forwarder is not None and self._tracker is not None:
            await self.forwarder.saved()  # an older snapshot must not land last
            self._tracker.save(self.forwarder.rotation)
        if self._http is not None:
            await self._http.aclose()
        if self._oauth is not None:
            await self._oauth.aclose()
        self._logs.close()

    def _scope(self) -> Config:
        """The config that says which flows are ours: the loaded one, or the
        defaults while none could be loaded. Flows to other hosts must pass
        untouched even then; those to Qwen are answered with the reason."""
        if self.config is not None:
            return self.config
        if self._default is None:
            self._default = Config()
        return self._default

    def _config(self) -> Config:
        if self._config_error is not None:
            raise ConfigError(self._config_error)  # never defaults instead
        if self.config is None:  # configure always runs first under mitmproxy
            self.config = Config()
        return self.config

    async def _proactive_refresh(self) -> None:
        while True:
            await self._refresh_all(force=False)
            await asyncio.sleep(PROACTIVE_INTERVAL)

    async def _refresh_all(self, *, force: bool) -> None:
        if self.forwarder is None:
            return
        tokens = self.forwarder.tokens
        try:
            accounts = (await tokens.accounts()).accounts
        except Exception as e:
            log.warning("cannot read the accounts: %s", e)
            return
        for account in accounts:
            if account.kind != "oauth" or account.disabled or account.needs_relogin:
                continue
            try:
                await tokens.ensure_fresh(account.id, force=force)
            except Exception as e:  # logged by the token manager too
                log.debug("refresh of %s failed: %s", account.label, e)

    # --- hooks ------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        # Only here can a body be kept from being buffered whole (see .bodylimit).
        try:
            if flow.response is not None or flow.error is not None:
                return
            req = flow.request
            path = _api_path(req)
            if (
                self.relay_port is None
                or req.method != "POST"
                or path not in API_PATHS
                or not _intercepted(req, self._scope())
                or self._config_error is not None  # ``request`` answers it
            ):
                return
            cfg = self._config()
            limit = cfg.max_request_body_mb * MIB
            length = declared_length(req)
            # mitmproxy's own ``stream_large_bodies`` may have set ``stream``
            # already: such a body would go on to the host the client named as
            # it comes, and ``request`` run only after it went. Ours collects it.
            if length is not None and length <= limit and not req.stream:
                return  # buffered by mitmproxy, handled in ``request``
            collector = BodyCollector(limit, declared=length)
            self._streamed[flow.id] = (path, collector)
            req.stream = collector
            self._to_relay(flow)
            # What reaches the relay is an empty body; chunked frames it.
            req.headers.pop("content-length", None)
            req.headers["transfer-encoding"] = "chunked"
        except Exception:
            log.exception("flow %s: cannot check the request's size", flow.id)
            self._streamed.pop(flow.id, None)
            flow.kill()  # type: ignore[no-untyped-call]  # not on half rewritten

    async def request(self, flow: http.HTTPFlow) -> None:
        # Everything inside the try: should even the scope check fail, the flow
        # is answered here rather than passed on with the client's own key.
        try:
            if flow.response is not None or flow.error is not None:
                return
            streamed = self._streamed.pop(flow.id, None)
            if streamed is not None:
                self._route_streamed(flow, *streamed)
                return
            req = flow.request
            if not _intercepted(req, self._scope()):
                return  # not ours: byte-for-byte, its own Authorization kept
            if self._config_error is not None:
                message = (
                    f"The Qwen proxy's configuration is invalid: {self._config_error}"
                )
                self._reply(flow, 503, error_body(redact.redact(message)))
                return
            if log.isEnabledFor(logging.DEBUG):  # pretty_host costs a header lookup
                log.debug(
                    "flow %s: %s %s%s",
                    flow.id,
                    req.method,
                    req.pretty_host,
                    req.path,
                )
            self._route(flow)
        except Exception as e:
            log.exception("flow %s: cannot handle the request", flow.id)
            self._drop_job(flow.id)  # answered here: the relay will never see it
            self._reply(flow, 502, error_body(f"Proxy error: {redact.redact(str(e))}"))

    def _route(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        path = _api_path(req)
        if req.method == "GET" and path == "/v1/models":
            self._reply(flow, 200, MODELS_BODY, failed=False)
            flow.comment = "qwen · models (answered by the proxy)"
            return
        if req.method != "POST" or path not in API_PATHS:
            message = f"{req.method} {path} is not served by the Qwen proxy."
            body = error_body(
                message, code="not_found", error_type="invalid_request_error"
            )
            self._reply(flow, 404, body)
            return
        try:
            parsed = parse_body(req.get_content(strict=False) or b"")
            job = self._job(flow.id, path, parsed)
        except TranslationError as e:
            self._reply(flow, e.status, e.body_bytes())
            return
        if self.relay_port is None:
            self._reply(flow, 503, error_body("The Qwen proxy is not running yet."))
            return
        # The job first: its upstream request is on its way before the flow is
        # rewritten for mitmproxy (see _start).
        self._start(flow, job)
        self._to_relay(flow)
        # The job carries the parsed body and the relay ignores the raw one:
        # sending it on would only copy it twice more (socket buffers, relay).
        job.client_body = req.raw_content or b""
        req.content = b""
        self._accept(flow, job, parsed)

    def _route_streamed(
        self, flow: http.HTTPFlow, path: str, collector: BodyCollector
    ) -> None:
        """A flow ``requestheaders`` sent to the relay: a job, or a refusal."""
        if collector.too_large:
            limit = self._config().max_request_body_mb
            error = TranslationError(
                f"The request body is larger than this proxy's limit of {limit} MiB "
                "(qwen_max_request_body_mb).",
                code="request_too_large",
                status=413,
            )
            self.jobs[flow.id] = _refused(flow.id, path, error)
            self._mark_refused(flow, error.status)
            return
        raw = collector.body()
        try:
            body = parse_body(raw)
            job = self._job(flow.id, path, body)
        except TranslationError as e:
            self.jobs[flow.id] = _refused(flow.id, path, e)
            self._mark_refused(flow, e.status)
            return
        job.client_body = raw
        self._start(flow, job)
        self._accept(flow, job, body)

    def _to_relay(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        assert self.relay_port is not None
        # Scheme first: the host/port setters then write a matching Host header.
        req.scheme = "http"
        req.host = "127.0.0.1"
        req.port = self.relay_port
        req.path = f"/{flow.id}"
        for name in ("authorization", "cookie", "proxy-authorization"):
            req.headers.pop(name, None)

    def _start(self, flow: http.HTTPFlow, job: Job) -> None:
        """Serve ``job`` from now on; the relay connection mitmproxy opens for
        its flow only carries the answer out (see .outbox). Under mitmproxy's
        eager task factory the task runs at once up to its first wait, so the
        upstream request is written before this returns.

        Not a flow held in mitmweb (intercepted): it may be edited, dropped or
        held for minutes, so it is served only once it reaches the relay."""
        self.jobs[job.flow_id] = job
        if self.forwarder is not None and not flow.intercepted:
            job.outbox = Outbox()
            job.task = spawn(
                self.forwarder.serve(job, job.outbox), name=f"qwen job {job.flow_id}"
            )

    def _accept(self, flow: http.HTTPFlow, job: Job, body: object) -> None:
        """What mitmweb shows of a started job: metadata and comment."""
        flow.metadata["qwen"] = {"kind": job.kind, "stream": job.stream}
        if job.kind == "responses":
            flow.metadata["qwen"]["responses_request"] = body
        flow.comment = f"qwen · {job.kind} · relayed"
        if log.isEnabledFor(logging.DEBUG):  # the URL is built for nothing otherwise
            log.debug(
                "flow %s: %s request (stream=%s) relayed to %s",
                flow.id,
                job.kind,
                job.stream,
                flow.request.url,
            )

    def _job(self, flow_id: str, path: str, body: object) -> Job:
        # The key costs a hash of the conversation's start: only if the pick uses it.
        keyed = self.forwarder is None or self.forwarder.rotation.uses_conversations
        if path == "/v1/responses":
            translated = translate_request(body)
            return Job(
                flow_id,
                "responses",
                translated.chat,
                translated,
                conversation_key(body) if keyed else None,
                translated.stream,
            )
        chat = check_chat_request(body)
        return Job(
            flow_id,
            "chat",
            chat,
            None,
            chat_conversation_key(chat) if keyed else None,
            bool(chat.get("stream")),
        )

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        try:
            job = self.jobs.get(flow.id)
            if job is not None and job.stream and flow.response is not None:
                # The relay wrote the final bytes: pass them on as they come.
                # Whole answers stay buffered, so mitmweb shows their body.
                flow.response.stream = True
            if job is not None and job.outbox is not None:
                job.outbox.head_taken()
        except Exception:
            log.exception("flow %s: responseheaders", flow.id)

    def response(self, flow: http.HTTPFlow) -> None:
        try:
            job = self.jobs.pop(flow.id, None)
            if job is None:
                return
            if not job.taken:
                # Answered without the relay (another addon, or mitmweb): the job
                # would wait for a connection that never comes, holding its upstream.
                job.cancel()
            _show_client_body(flow, job)
            flow.comment = job.comment()
            if job.failed:
                flow.marked = FAILED_MARK
            log.log(
                logging.WARNING if job.failed else logging.INFO,
                "%s %s",
                job.status,
                flow.comment,
            )
            meta = flow.metadata.setdefault("qwen", {})
            meta["attempts"] = [[a.label, a.outcome] for a in job.attempts]
            meta["served_by"] = job.served_by
        except Exception:
            log.exception("flow %s: response", flow.id)

    def error(self, flow: http.HTTPFlow) -> None:
        try:
            self._streamed.pop(flow.id, None)  # the client left mid-upload
            job = self.jobs.pop(flow.id, None)
            if job is None:
                return
            # The client is gone, perhaps before mitmproxy reached the relay:
            # nobody is left to read the answer, nor to spend an account on.
            if job.cancel():
                log.info("flow %s: the client went away; its job is abandoned", flow.id)
            _show_client_body(flow, job)
            flow.comment = job.comment() + " · stream cut"
            flow.marked = FAILED_MARK
            log.debug("flow %s: cut; %d relayed flows open", flow.id, len(self.jobs))
        except Exception:
            log.exception("flow %s: error", flow.id)

    def _drop_job(self, flow_id: str) -> None:
        job = self.jobs.pop(flow_id, None)
        if job is not None:
            job.cancel()

    def _reply(
        self, flow: http.HTTPFlow, status: int, body: bytes, *, failed: bool = True
    ) -> None:
        flow.response = http.Response.make(
            status, body, {"Content-Type": "application/json"}
        )
        if failed:
            self._mark_refused(flow, status)

    def _mark_refused(self, flow: http.HTTPFlow, status: int) -> None:
        flow.marked = FAILED_MARK
        flow.comment = f"qwen · answered {status} by the proxy"
        log.warning("flow %s: answered %d by the proxy", flow.id, status)

    # --- the relay ----------------------------------------------------------------

    async def _serve_relay(self, path: str, out: ResponseWriter) -> None:
        job = self.jobs.get(path.lstrip("/"))
        if job is None or job.taken or self.forwarder is None:
            await out.answer(404, error_body("Unknown relay request."))
            return
        job.taken = True
        if job.refusal is not None:
            await out.answer(*job.refusal)
            return
        if job.task is None or job.outbox is None:
            await self.forwarder.serve(job, out)  # accepted before running
            return
        job.outbox.attach(out)
        # Cancelled (mitmproxy hung up, the relay stops): so is the job.
        await job.task
        if not out.started:  # it gave up waiting for this connection
            late = "The proxy gave up on this request: it reached the relay too late."
            await out.answer(504, error_body(late))

    # --- commands -----------------------------------------------------------------

    @command.command("qwen.accounts")  # type: ignore[untyped-decorator]
    def accounts_command(self) -> None:
        """Log each account's state (rotation table)."""
        spawn(self._log_accounts(), name="qwen.accounts")

    @command.command("qwen.refresh")  # type: ignore[untyped-decorator]
    def refresh_command(self) -> None:
        """Refresh every OAuth account's token now."""
        spawn(self._refresh_all(force=True), name="qwen.refresh")

    @command.command("qwen.reload")  # type: ignore[untyped-decorator]
    def reload_command(self) -> None:
        """Re-read the config files and the accounts file."""
        try:
            self.configure({options.PREFIX + "reload"})
        except exceptions.OptionsError as e:
            log.error("config not reloaded, the previous one stays: %s", e)
            return
        spawn(self._log_accounts(), name="qwen.reload")

    async def _log_accounts(self) -> None:
        try:
            if self.forwarder is None:
                log.info("the Qwen proxy is not running yet")
                return
            accounts = list((await self.forwarder.tokens.accounts()).accounts)
            now = time.time()
            tz = parse_timezone(self.forwarder.config.quota_reset_timezone)
            statuses = self.forwarder.rotation.status(accounts, now)
            log.info(
                "Qwen accounts:\n%s", render_status_table(statuses, accounts, now, tz)
            )
        except Exception:
            log.exception("cannot list the accounts")


def _api_path(req: http.Request) -> str:
    return req.path.split("?", 1)[0].rstrip("/")


def _intercepted(req: http.Request, cfg: Config) -> bool:
    return is_intercepted(req.host, req.port, cfg) or is_intercepted(
        req.pretty_host, req.port, cfg
    )


def _refused(flow_id: str, path: str, error: TranslationError) -> Job:
    """A job the relay answers at once with ``error`` (see ``Job.refusal``)."""
    kind: Kind = "responses" if path == "/v1/responses" else "chat"
    job = Job(
        flow_id, kind, {}, None, None, False, refusal=(error.status, error.body_bytes())
    )
    job.status, job.failed, job.error = error.status, True, error.message
    return job


def _show_client_body(flow: http.HTTPFlow, job: Job) -> None:
    """Put the client's body back on the answered flow, for mitmweb to show."""
    if job.client_body:
        flow.request.raw_content = bytes(job.client_body)  # bytes: the same object
        if "transfer-encoding" not in flow.request.headers:
            flow.request.headers["content-length"] = str(len(job.client_body))
        job.client_body = b""
