"""The running relay: the spool, the sources that feed it, delivery, and the ops endpoints.

Start order: spool, delivery, listeners. Stop order, on SIGTERM/SIGINT or when a supervised
background task dies (see `relay.supervision`), in named phases: stop accepting (listeners), stop
delivery (requests in flight may finish until `lifecycle.shutdown_timeout`), close the spool (the
commit in progress finishes). What was not delivered stays in the spool for the next start. After a
failure `serve` raises `BackgroundFailure`, so `relay run` exits non-zero and is restarted.
SIGHUP reloads the configuration in place (`relay.ops.reload`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from relay import gc_tuning, supervision
from relay.auth.credentials import Credentials
from relay.config import Config, parse_listen, spool_options
from relay.config.advice import config_advice
from relay.delivery.setup import DeliveryParts, build_delivery, load_delivery_credentials
from relay.errors import UserError
from relay.ops import collectors, endpoints
from relay.ops.console_app import Console, spool_admin
from relay.ops.metrics import Metrics
from relay.ops.reload import ConfigLoads, Reloader, Targets
from relay.ops.samples import Sampler
from relay.ops.status import StatusReport
from relay.signals import on_reload_signal, until_signalled
from relay.sources.http import HttpSource, read_auth_token
from relay.sources.http_listener import LimitedTCPSite
from relay.sources.intake import Intake
from relay.sources.json_lines import JsonLinesSource, start_json_lines
from relay.sources.relp import RelpSource, start_relp
from relay.sources.syslog import SyslogSource, start_syslog
from relay.sources.tls import ListenerTLS, listeners_tls
from relay.spool import Spool, SpoolAdmin, open_spool

log = logging.getLogger("relay")

# what a reload changes in the application build_app made
HTTP_SOURCE = web.AppKey("http_source", HttpSource)
STATUS_REPORT = web.AppKey("status_report", StatusReport)
SAMPLER = web.AppKey("sampler", Sampler)  # the console's charts; `serve` runs it


def build_app(
    cfg: Config,
    spool: Spool,
    auth_token: str | None = None,
    delivery: DeliveryParts | None = None,
    intake: Intake | None = None,
    metrics: Metrics | None = None,
    loads: ConfigLoads | None = None,
    admin: SpoolAdmin | None = None,
) -> web.Application:
    """The HTTP application: ingest paths, the operator's endpoints and the console (`GET /`,
    whose dead-letter actions use `admin`, by default the configured spool's)."""
    http = cfg.ingest.http
    intake = intake or Intake(spool, cfg.ingest.max_event_bytes)
    metrics = metrics or Metrics()
    # auto_decompress off: the source inflates bodies itself, bounded by max_body_bytes.
    # keepalive_timeout also closes a connection that never completes its request headers.
    app = web.Application(
        client_max_size=http.max_body_bytes,
        handler_args={"auto_decompress": False, "keepalive_timeout": http.keepalive_timeout},
    )
    source = HttpSource(
        intake,
        max_body_bytes=http.max_body_bytes,
        auth_token=auth_token,
        max_items=cfg.ingest.max_items_per_request,
        read_timeout=http.read_timeout,
    )
    source.add_routes(app)
    app[HTTP_SOURCE] = source
    collectors.register(metrics, spool, delivery, intake.counters)
    app[STATUS_REPORT] = StatusReport(cfg, spool, delivery, loads=loads)
    endpoints.add_routes(
        app,
        spool,
        metrics,
        app[STATUS_REPORT],
        [delivery.sink.not_ready] if delivery else [],
    )
    app[SAMPLER] = Sampler(spool, intake.counters, delivery)
    console = Console(
        cfg,
        spool,
        app[STATUS_REPORT],
        app[SAMPLER],
        admin if admin is not None else spool_admin(cfg, spool),
        source,
        delivery,
    )
    console.add_routes(app)
    return app


_SPOOL_WATCH_EVERY = 1.0  # seconds between checks that the spool's writer thread still runs


async def serve(
    cfg: Config, stop: asyncio.Event | None = None, config_path: str | None = None
) -> None:
    """Run until SIGTERM or SIGINT (or `stop` is set); raises BackgroundFailure, after stopping in
    order, when a supervised background task or thread ended unexpectedly. SIGHUP reloads the
    configuration from `config_path` (the file `cfg` was loaded from) and the environment."""
    # everything a user can get wrong is checked before the spool is opened
    auth_token = read_auth_token(cfg.ingest.http.auth_token_file)
    host, port = parse_listen(cfg.ingest.http.listen, "ingest.http.listen")
    creds = load_delivery_credentials(cfg)
    tls = listeners_tls(cfg)

    supervisor = supervision.Supervisor(asyncio.get_running_loop())
    supervision.install(supervisor)
    reloader = Reloader(config_path, cfg, creds, ConfigLoads(config_path))
    try:
        with on_reload_signal(reloader.request):
            await _serve(cfg, stop, supervisor, auth_token, host, port, creds, tls, reloader)
    finally:
        await reloader.close()
        supervision.uninstall()
    if supervisor.failed is not None:
        raise supervision.BackgroundFailure(supervisor.failed)


async def _serve(
    cfg: Config,
    stop: asyncio.Event | None,
    supervisor: supervision.Supervisor,
    auth_token: str | None,
    host: str,
    port: int,
    creds: Credentials | None,
    tls: dict[str, ListenerTLS | None],
    reloader: Reloader,
) -> None:
    metrics = Metrics()
    shutdown = _Shutdown(cfg.lifecycle.shutdown_timeout, supervisor)
    # Each part is stopped by a callback pushed right after it starts: they run in reverse order,
    # so the phases come out as stop accepting, stop delivery, close the spool.
    async with contextlib.AsyncExitStack() as stack:
        spool = await open_spool(
            cfg.spool.backend,
            cfg.spool.path,
            max_bytes=cfg.spool.max_bytes,
            dedup_window=cfg.spool.dedup_window,
            on_commit=metrics.commit_seconds.observe,
            options=spool_options(cfg),
        )
        stack.push_async_callback(shutdown.close_spool, spool)
        # a thread cannot be awaited: a writer that died without reporting is noticed by polling
        shutdown.cancel_on_stop(
            supervision.watch(
                asyncio.create_task(_watch_spool(spool), name="spool watchdog"), "spool watchdog"
            )
        )
        delivery = None
        if creds is not None:
            delivery = build_delivery(cfg, spool, creds, on_delivered=metrics.observe_delivered)
            stack.push_async_callback(shutdown.stop_delivery, delivery)

        stack.push_async_callback(shutdown.close_listeners)
        intake = Intake(spool, cfg.ingest.max_event_bytes)
        app = build_app(cfg, spool, auth_token, delivery, intake, metrics, reloader.loads)
        # a chart gap is all a failing sample costs (it logs); the task itself must keep running
        shutdown.cancel_on_stop(
            supervision.watch(
                asyncio.create_task(app[SAMPLER].run(), name="console sampler"), "console sampler"
            )
        )
        http_tls = tls["ingest.http"]
        http_port = await _start_http(
            cfg, app, host, port, shutdown, http_tls.context if http_tls else None
        )
        syslog = await start_syslog(cfg.ingest.syslog, intake, tls["ingest.syslog"])
        shutdown.listeners.append(syslog.close)
        json_lines = await start_json_lines(cfg.ingest.json_lines, intake, tls["ingest.json_lines"])
        shutdown.listeners.append(json_lines.close)
        relp = await start_relp(cfg.ingest.relp, intake, tls["ingest.relp"])
        shutdown.listeners.append(relp.close)
        listeners = {"syslog_tcp": syslog.tcp, "json_lines": json_lines.tcp, "relp": relp.listener}
        collectors.register_listeners(metrics, listeners, syslog.kernel_drops)

        shown_host = f"[{host}]" if ":" in host else host
        scheme = f" ({http_tls.describe()})" if http_tls else ""
        _log_ready(cfg, spool, f"{shown_host}:{http_port}{scheme}", syslog, json_lines, relp)
        for advice in config_advice(cfg, delivering=delivery is not None):
            log.log(advice.level, "%s", advice.text)
        if delivery is not None:
            await delivery.start()
            log.info("delivering to %s over %s", cfg.upstream.address, cfg.upstream.transport)
        shutdown.started = True
        reloader.attach(
            Targets(
                app[HTTP_SOURCE],
                tls,
                delivery,
                app[STATUS_REPORT].set_stall_after,
                shutdown.set_timeout,
            )
        )
        thresholds = gc_tuning.tune()
        try:
            await _until_stopped(stop, supervisor)
        finally:
            reloader.detach()
            gc_tuning.restore(thresholds)


async def _start_http(
    cfg: Config,
    app: web.Application,
    host: str,
    port: int,
    shutdown: _Shutdown,
    ssl_context: ssl.SSLContext | None = None,
) -> int:
    """Serve `app` on host:port; returns the port (the one the OS chose for port 0)."""
    # the drain of delivery bounds shutdown; the HTTP side only finishes the requests it holds
    runner = web.AppRunner(
        app, access_log=None, shutdown_timeout=min(cfg.lifecycle.shutdown_timeout, 5.0)
    )
    await runner.setup()
    shutdown.listeners.append(runner.cleanup)
    site = LimitedTCPSite(
        runner,
        host,
        port,
        max_connections=cfg.ingest.http.max_connections,
        ssl_context=ssl_context,
    )
    try:
        await site.start()
    except OSError as exc:
        raise UserError(
            f"cannot listen on {cfg.ingest.http.listen} (ingest.http.listen): "
            f"{exc.strerror}; choose a free address"
        ) from None
    return site.port


class _Shutdown:
    """The stop in named phases. Whichever phase runs first (the stack unwinds from where start-up
    got to) first marks the relay as stopping, so supervised tasks ending now are expected."""

    def __init__(self, timeout: float, supervisor: supervision.Supervisor) -> None:
        self.timeout = timeout
        self.supervisor = supervisor
        self.listeners: list[Callable[[], Awaitable[object]]] = []  # what stops each one
        self.started = False  # start-up completed: worth a "stopped" line with the backlog
        self._deadline: float | None = None
        self._tasks: list[asyncio.Task] = []

    def set_timeout(self, seconds: float) -> None:
        self.timeout = seconds  # a reload's lifecycle.shutdown_timeout, until the stop begins

    def cancel_on_stop(self, task: asyncio.Task) -> None:
        self._tasks.append(task)

    def _begin(self) -> float:
        """The deadline for delivery to finish what it holds."""
        if self._deadline is None:
            # from here on every task that ends was told to (or the failure is already recorded)
            supervision.stopping()
            for task in self._tasks:
                task.cancel()
            failed = self.supervisor.failed
            log.info("shutting down %s", f"after a failure: {failed}" if failed else "on request")
            self._deadline = time.monotonic() + self.timeout
        return self._deadline

    async def close_listeners(self) -> None:
        self._begin()
        # the sources close before the spool: what they have read is still stored
        log.info("shutdown phase 1/3: closing listeners, no longer accepting events")
        closing = [close() for close in self.listeners]
        for result in await asyncio.gather(*closing, return_exceptions=True):
            if isinstance(result, Exception):
                log.error("error while stopping a listener: %s", result)

    async def stop_delivery(self, delivery: DeliveryParts) -> None:
        deadline = self._begin()
        log.info("shutdown phase 2/3: stopping delivery")
        await delivery.stop(max(0.0, deadline - time.monotonic()))

    async def close_spool(self, spool: Spool) -> None:
        self._begin()
        log.info("shutdown phase 3/3: closing the spool")
        await spool.close()
        if self.started:
            stats = spool.stats()
            log.info("stopped; %d undelivered event(s) stay in the spool", stats.events)


def _log_ready(
    cfg: Config,
    spool: Spool,
    http_address: str,
    syslog: SyslogSource,
    json_lines: JsonLinesSource,
    relp: RelpSource,
) -> None:
    stats = spool.stats()
    ingest = cfg.ingest

    def bound(address: str, port: int | None) -> str:
        # the port the OS chose when the configuration says 0, so tests and operators know it
        return f"{address.rsplit(':', 1)[0]}:{port}" if port else address

    listeners = [f"http {http_address}"] + [
        f"{name} {bound(address, port)}"
        for name, address, port in (
            ("syslog tcp", ingest.syslog.tcp_listen, syslog.tcp_port),
            ("syslog udp", ingest.syslog.udp_listen, syslog.udp_port),
            ("json lines", ingest.json_lines.tcp_listen, json_lines.port),
            ("relp", ingest.relp.listen, relp.port),
        )
        if address
    ]
    log.info(
        "relay ready: %s; spool %s (%d events, %d bytes queued, %d dead letters)",
        ", ".join(listeners),
        # a shared stream holds the events, not the relay's own folder
        f"jetstream stream {cfg.spool.jetstream.stream}"
        if cfg.spool.backend == "jetstream"
        else cfg.spool.path,
        stats.events,
        stats.bytes,
        stats.dead_letters,
    )
    if stats.set_aside:
        log.error("spool has %d quarantined file(s): %s", len(stats.set_aside), stats.set_aside)


async def _until_stopped(stop: asyncio.Event | None, supervisor: supervision.Supervisor) -> None:
    """Until a signal (or `stop`), or the first unexpected exit of a supervised task."""
    asked = asyncio.ensure_future(stop.wait() if stop is not None else until_signalled())
    failed = asyncio.ensure_future(supervisor.wait())
    try:
        await asyncio.wait((asked, failed), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (asked, failed):
            task.cancel()
        await asyncio.gather(asked, failed, return_exceptions=True)


async def _watch_spool(spool: Spool) -> None:
    while spool.alive():
        await asyncio.sleep(_SPOOL_WATCH_EVERY)
    if supervision.failure() is None:  # the writer usually reports its own death, with the cause
        stopped = RuntimeError("the spool's writer thread stopped")
        supervision.report_failure("spool writer", stopped)
    # returning would count as a second, vaguer failure; wait to be cancelled at shutdown
    await asyncio.Event().wait()
