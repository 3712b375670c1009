"""HTTP side of the status-service stand-in, plus read and fault-switch endpoints.

``POST /api/status`` answers as the real service does: 200 with an empty body, 400 text/plain
with the validation message, 401 with ``WWW-Authenticate: Bearer``. The read and admin
endpoints have no authentication: this is a development tool meant for 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

if TYPE_CHECKING:
    from relay.dev.status_service import StatusServiceStandIn

__all__ = ["STATUS_PATHS", "add_routes"]

log = logging.getLogger("relay.dev.status_http")

# The app serves /api/status; /logging is the public reverse-proxy prefix.
STATUS_PATHS = ("/api/status", "/logging/api/status")

_MAX_LIMIT = 100_000


def add_routes(app: web.Application, service: StatusServiceStandIn) -> None:
    routes = _Routes(service)
    for path in STATUS_PATHS:
        app.router.add_post(path, routes.post_status)
    app.router.add_get("/api/statuses", routes.get_statuses)
    app.router.add_get("/api/stats", routes.get_stats)
    app.router.add_get("/admin/faults", routes.get_faults)
    app.router.add_post("/admin/faults", routes.post_faults)
    app.router.add_post("/admin/stats/reset", routes.reset_stats)


class _Routes:
    def __init__(self, service: StatusServiceStandIn) -> None:
        self.service = service

    async def post_status(self, request: web.Request) -> web.Response:
        service = self.service
        faults = service.faults
        service.http_requests += 1
        if faults.delay > 0:
            await asyncio.sleep(faults.delay)
        fault = faults.http_fault()
        if fault is not None:
            status, headers = fault
            return web.Response(status=status, text="stand-in fault switch", headers=headers)
        try:
            claims = service.authorise(_bearer(request.headers.get("Authorization", "")))
        except PermissionError as err:
            log.info("HTTP status refused: access denied: %s", err)
            return web.Response(
                status=401, text=f"Access Denied: {err}", headers={"WWW-Authenticate": "Bearer"}
            )
        # Spring answers a non-JSON body type with 415 before looking at it.
        if not _is_json(request.content_type):
            return _text(415, f"Content-Type {request.content_type} is not supported")
        data = await request.read()
        try:
            service.receive(data, claims=claims, transport="http", interaction="http")
        except ValueError as err:
            log.info("HTTP status refused: %s", err)
            return _text(400, str(err))
        return web.Response(status=200)

    async def get_statuses(self, request: web.Request) -> web.Response:
        query = request.query
        try:
            limit = int(query.get("limit", "1000"))
        except ValueError:
            return _text(400, "limit must be an integer")
        if not 0 <= limit <= _MAX_LIMIT:
            return _text(400, f"limit must be from 0 to {_MAX_LIMIT}")
        rows = self.service.store.statuses(
            conversation_id=query.get("conversation_id"),
            message_id=query.get("message_id"),
            limit=limit,
        )
        return _json(rows)

    async def get_stats(self, request: web.Request) -> web.Response:
        return _json(self.service.stats())

    async def reset_stats(self, request: web.Request) -> web.Response:
        """Start the "acked" counters afresh; answers what they held until now."""
        acked = self.service.acked
        before = acked.as_dict()
        acked.reset()
        return _json({"acked": before})

    async def get_faults(self, request: web.Request) -> web.Response:
        return _json(self.service.faults.as_dict())

    async def post_faults(self, request: web.Request) -> web.Response:
        try:
            changes = orjson.loads(await request.read())
            self.service.faults.update(changes)
        except orjson.JSONDecodeError as err:
            return _text(400, f"body is not valid JSON: {err.msg}")
        except ValueError as err:
            return _text(400, str(err))
        log.info("faults now %s", self.service.faults.as_dict())
        return _json(self.service.faults.as_dict())


def _bearer(header: str) -> str | None:
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


def _text(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/plain")


def _json(value: object) -> web.Response:
    return web.Response(body=orjson.dumps(value), content_type="application/json")
