"""HTTP side of the status-service stand-in, plus read and fault-switch endpoints.

``POST /api/status`` answers as the real service does: 200 with an empty body; 400 text/plain
with one of the service's three validation messages; 400 with Spring Boot's JSON error body
(empty message) when the body cannot be bound to its status class (not JSON, an array, an
unknown status, a missing or null field, a timestamp with an offset, ...); 401 with an empty
body and ``WWW-Authenticate: Bearer`` for a missing or refused token, as Spring Security's
bearer-token entry point answers. The read and admin
endpoints have no authentication: this is a development tool meant for 127.0.0.1.

``/api/stats`` reports every transport registered in the service's ``listeners``, RSocket
included, without this module knowing about it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import UTC, datetime

import orjson
from aiohttp import web

from relay.dev.status_service import StatusServiceStandIn

__all__ = ["NAME", "STATUS_PATHS", "HttpStandIn", "start"]

log = logging.getLogger("relay.dev.status_http")

# The app serves /api/status; /logging is the public reverse-proxy prefix.
STATUS_PATHS = ("/api/status", "/logging/api/status")

# The key of this transport's counters in the service's stats.
NAME = "http"

_MAX_LIMIT = 100_000

# The three messages the service's own validation answers as text/plain; every other refusal
# of an event is a binding failure there, answered with Spring Boot's JSON error body.
_VALIDATION = re.compile(
    r"(?:Sender|Receiver) field \(.*\) is not valid ISO6523 format\."
    r"|message_id and conversation_id must be of type UUID"
    r"|Range for ISO6523 not supported",
    re.DOTALL,
)


class HttpStandIn:
    """The HTTP server of one service; ``port`` is the bound port once listening."""

    def __init__(self, service: StatusServiceStandIn) -> None:
        self.service = service
        self.port = 0
        self.requests = 0  # POSTs of statuses, answered or refused
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        routes = _Routes(self)
        for path in STATUS_PATHS:
            app.router.add_post(path, routes.post_status)
        app.router.add_get("/api/statuses", routes.get_statuses)
        app.router.add_get("/api/stats", routes.get_stats)
        app.router.add_get("/admin/faults", routes.get_faults)
        app.router.add_post("/admin/faults", routes.post_faults)
        app.router.add_post("/admin/stats/reset", routes.reset_stats)
        return app

    def counters(self) -> dict[str, int]:
        return {"requests": self.requests}

    async def listen(self, host: str, port: int) -> None:
        runner = web.AppRunner(self.app())
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def start(host: str, port: int, service: StatusServiceStandIn) -> HttpStandIn:
    """Serve ``service`` on host:port (0 = any free port) and register it for its stats."""
    server = HttpStandIn(service)
    await server.listen(host, port)
    service.listeners[NAME] = server
    return server


class _Routes:
    def __init__(self, owner: HttpStandIn) -> None:
        self.owner = owner
        self.service = owner.service

    async def post_status(self, request: web.Request) -> web.Response:
        service = self.service
        faults = service.faults
        self.owner.requests += 1
        if faults.delay > 0:
            await asyncio.sleep(faults.delay)
        fault = faults.http_fault()
        if fault is not None:
            status, headers = fault
            return web.Response(status=status, text="stand-in fault switch", headers=headers)
        try:
            claims = service.authorise(_bearer(request.headers.get("Authorization", "")))
        except PermissionError as err:
            log.info("HTTP status refused: %s", err)
            return web.Response(status=401, headers={"WWW-Authenticate": _challenge(str(err))})
        # Spring answers a non-JSON body type with 415 before looking at it.
        if not _is_json(request.content_type):
            return _text(415, f"Content-Type {request.content_type} is not supported")
        data = await request.read()
        try:
            service.receive(data, claims=claims, transport="http", interaction="http")
        except ValueError as err:
            log.info("HTTP status refused: %s", err)
            text = str(err)
            if _VALIDATION.fullmatch(text) or text == faults.reject_message:
                return _text(400, text)
            return _spring_error(400, "Bad Request", request.path)
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


def _challenge(reason: str) -> str:
    """Spring Security's WWW-Authenticate: bare for no token, with the reason for a bad one."""
    if reason == "Access Denied":
        return "Bearer"
    description = reason.replace("\\", "\\\\").replace('"', '\\"')
    return (
        f'Bearer error="invalid_token", error_description="{description}", '
        'error_uri="https://tools.ietf.org/html/rfc6750#section-3.1"'
    )


def _spring_error(status: int, error: str, path: str) -> web.Response:
    """Spring Boot 2.5's default error body (server.error.include-message=never: empty)."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+00:00"
    body = {"timestamp": now, "status": status, "error": error, "message": "", "path": path}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


def _text(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/plain")


def _json(value: object) -> web.Response:
    return web.Response(body=orjson.dumps(value), content_type="application/json")
