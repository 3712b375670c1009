"""The running relay: the spool, the sources that feed it, delivery, and the ops endpoints.

Start order: spool, delivery, listeners. Stop order, on SIGTERM/SIGINT: stop accepting, finish the
commit in progress, let requests in flight finish until `lifecycle.shutdown_timeout`, close the
spool. What was not delivered stays in the spool for the next start.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from aiohttp import web

from relay import gc_tuning
from relay.config import Config, parse_listen
from relay.config.advice import config_advice
from relay.delivery.setup import DeliveryParts, build_delivery, load_delivery_credentials
from relay.errors import UserError
from relay.ops import collectors, endpoints
from relay.ops.metrics import Metrics
from relay.ops.status import StatusReport
from relay.sources.http import HttpSource, read_auth_token
from relay.sources.http_listener import LimitedTCPSite
from relay.sources.intake import Intake
from relay.sources.json_lines import JsonLinesSource, start_json_lines
from relay.sources.syslog import SyslogSource, start_syslog
from relay.spool import Spool, SqliteSpool

log = logging.getLogger("relay")


def build_app(
    cfg: Config,
    spool: Spool,
    auth_token: str | None = None,
    delivery: DeliveryParts | None = None,
    intake: Intake | None = None,
) -> web.Application:
    """The HTTP application: ingest paths and the operator's endpoints."""
    http = cfg.ingest.http
    intake = intake or Intake(spool, http.max_event_bytes)
    # auto_decompress off: the source inflates bodies itself, bounded by max_body_bytes.
    # keepalive_timeout also closes a connection that never completes its request headers.
    app = web.Application(
        client_max_size=http.max_body_bytes,
        handler_args={"auto_decompress": False, "keepalive_timeout": http.keepalive_timeout},
    )
    HttpSource(
        intake,
        max_body_bytes=http.max_body_bytes,
        auth_token=auth_token,
        max_items=cfg.ingest.max_items_per_request,
        read_timeout=http.read_timeout,
    ).add_routes(app)
    collectors.register(intake.metrics, spool, delivery, intake)
    endpoints.add_routes(
        app,
        spool,
        intake.metrics,
        StatusReport(cfg, spool, delivery),
        [delivery.sink.not_ready] if delivery else [],
    )
    return app


async def serve(cfg: Config, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM or SIGINT (or `stop` is set)."""
    # everything a user can get wrong is checked before the spool is opened
    auth_token = read_auth_token(cfg.ingest.http.auth_token_file)
    host, port = parse_listen(cfg.ingest.http.listen, "ingest.http.listen")
    creds = load_delivery_credentials(cfg)

    metrics = Metrics()
    spool = await SqliteSpool.open(
        cfg.spool.path,
        max_bytes=cfg.spool.max_bytes,
        dedup_window=cfg.spool.dedup_window,
        on_commit=metrics.commit_seconds.observe,
    )
    intake = Intake(spool, cfg.ingest.http.max_event_bytes, metrics)
    delivery: DeliveryParts | None = None
    runner: web.AppRunner | None = None
    syslog: SyslogSource | None = None
    json_lines: JsonLinesSource | None = None
    started = False
    try:
        if creds is not None:
            delivery = build_delivery(cfg, spool, creds, on_delivered=metrics.observe_delivered)
        app = build_app(cfg, spool, auth_token, delivery, intake)
        # the drain below bounds shutdown; the HTTP side only finishes the requests it holds
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=min(cfg.lifecycle.shutdown_timeout, 5.0)
        )
        await runner.setup()
        try:
            await LimitedTCPSite(
                runner, host, port, max_connections=cfg.ingest.http.max_connections
            ).start()
        except OSError as exc:
            raise UserError(
                f"cannot listen on {cfg.ingest.http.listen} (ingest.http.listen): "
                f"{exc.strerror}; choose a free address"
            ) from None
        max_event = cfg.ingest.http.max_event_bytes
        syslog = await start_syslog(cfg.ingest.syslog, intake, max_event)
        json_lines = await start_json_lines(cfg.ingest.json_lines, intake, max_event)
        metrics.add_collector(lambda: collectors.udp_drops(syslog))
        _log_ready(cfg, spool)
        for advice in config_advice(cfg, delivering=delivery is not None):
            log.log(advice.level, "%s", advice.text)
        if delivery is not None:
            await delivery.start()
            log.info("delivering to %s over %s", _upstream_address(cfg), cfg.upstream.transport)
        started = True
        thresholds = gc_tuning.tune()
        try:
            await (stop.wait() if stop is not None else _until_signalled())
        finally:
            gc_tuning.restore(thresholds)
        log.info("shutting down: no longer accepting events")
    finally:
        deadline = time.monotonic() + cfg.lifecycle.shutdown_timeout
        # the sources close before the spool: what they have read is still stored
        closing = [src.close() for src in (syslog, json_lines) if src is not None]
        if runner is not None:
            closing.append(runner.cleanup())
        for result in await asyncio.gather(*closing, return_exceptions=True):
            if isinstance(result, Exception):
                log.error("error while stopping a listener: %s", result)
        try:
            if delivery is not None:
                await delivery.stop(max(0.0, deadline - time.monotonic()))
        finally:
            await spool.close()
        if started:
            stats = spool.stats()
            log.info("stopped; %d undelivered event(s) stay in the spool", stats.events)


def _log_ready(cfg: Config, spool: Spool) -> None:
    stats = spool.stats()
    ingest = cfg.ingest
    listeners = [f"http {ingest.http.listen}"] + [
        f"{name} {address}"
        for name, address in (
            ("syslog tcp", ingest.syslog.tcp_listen),
            ("syslog udp", ingest.syslog.udp_listen),
            ("json lines", ingest.json_lines.tcp_listen),
        )
        if address
    ]
    log.info(
        "relay ready: %s; spool %s (%d events, %d bytes queued, %d dead letters)",
        ", ".join(listeners),
        cfg.spool.path,
        stats.events,
        stats.bytes,
        stats.dead_letters,
    )
    if stats.quarantined:
        log.error("spool has %d quarantined file(s): %s", len(stats.quarantined), stats.quarantined)


def _upstream_address(cfg: Config) -> str:
    up = cfg.upstream
    return f"{up.host}:{up.port}" if up.transport == "rsocket" else up.http_url


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
