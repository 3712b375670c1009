"""The operator's endpoints on the HTTP listener: /healthz, /readyz, /metrics, /status."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import orjson
from aiohttp import web

from relay import supervision
from relay.ops.metrics import CONTENT_TYPE, Metrics
from relay.ops.status import StatusReport
from relay.spool import Spool


def add_routes(
    app: web.Application,
    spool: Spool,
    metrics: Metrics,
    status: StatusReport,
    checks: Sequence[Callable[[], str | None]] = (),
) -> None:
    """`checks` are further reasons not to be ready (e.g. the upstream refusing our scope)."""

    async def healthz(_: web.Request) -> web.Response:
        # answering proves the event loop turns; the spool's writer and every supervised
        # background task must be running too
        failed = supervision.failure()
        if failed is not None:
            return web.Response(status=503, text=f"failed: {failed}\n")
        if not spool.alive():
            return web.Response(status=503, text="the spool's writer has stopped\n")
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        reason = spool.refusing() or next((r for c in checks if (r := c())), None)
        if reason:
            return web.Response(status=503, text=f"not ready: {reason}\n")
        return web.Response(text="ready\n")

    async def metrics_page(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def status_page(_: web.Request) -> web.Response:
        body = orjson.dumps(status.report(), option=orjson.OPT_INDENT_2)
        return web.Response(body=body, content_type="application/json")

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/status", status_page)
