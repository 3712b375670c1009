"""Liveness and readiness endpoints."""

from __future__ import annotations

from aiohttp import web

from relay.spool import Spool


def add_routes(app: web.Application, spool: Spool) -> None:
    async def healthz(_: web.Request) -> web.Response:
        # answering at all is the proof of liveness: the event loop is turning
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        reason = spool.refusing()
        if reason:
            return web.Response(status=503, text=f"not ready: {reason}\n")
        return web.Response(text="ready\n")

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
