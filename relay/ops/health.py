"""Liveness and readiness endpoints."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aiohttp import web

from relay.spool import Spool


def add_routes(
    app: web.Application, spool: Spool, checks: Sequence[Callable[[], str | None]] = ()
) -> None:
    """`checks` are further reasons not to be ready (e.g. the upstream refusing our scope)."""

    async def healthz(_: web.Request) -> web.Response:
        # answering at all is the proof of liveness: the event loop is turning
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        reason = spool.refusing() or next((r for c in checks if (r := c())), None)
        if reason:
            return web.Response(status=503, text=f"not ready: {reason}\n")
        return web.Response(text="ready\n")

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
