"""A stand-in for eFormidling's status service: real sockets, real checks, a SQLite record.

It answers like the service documented in shared/reference/upstream-protocol.md (RSocket route
``log-fire`` and ``POST /api/status``), stores what it accepted so tests and demos can look,
and has fault switches (relay.dev.faults) to play an unhealthy upstream.

The transports (status_rsocket, status_http) share the rules here and only translate
outcomes: PermissionError means "access denied", ValueError means "the request is refused"
and carries the text to send back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from relay.dev import status_http, status_rsocket
from relay.dev.faults import StatusFaults
from relay.dev.status_store import StatusStore
from relay.event import decode, normalise

__all__ = ["StatusServiceStandIn", "VerifyToken"]

VerifyToken = Callable[[str], Mapping[str, Any]]


class StatusServiceStandIn:
    def __init__(
        self,
        *,
        store_path: Path,
        verify_token: VerifyToken,
        faults: StatusFaults | None = None,
        scope: str | None = None,
    ) -> None:
        self.faults = faults if faults is not None else StatusFaults()
        self.store = StatusStore(store_path)
        self.rsocket: status_rsocket.RSocketStandIn | None = None
        self.http_requests = 0
        self._verify_token = verify_token
        self._scope = scope
        self._http_runner: web.AppRunner | None = None

    # -- the rules shared by both transports --------------------------------------------

    def authorise(self, token: str | None) -> Mapping[str, Any]:
        """The token's claims; PermissionError(reason) when it is missing or not acceptable."""
        if not token:
            raise PermissionError("no bearer token")
        try:
            claims = self._verify_token(token)
        except Exception as err:
            # verify_token may raise anything; its text is the reason (never the token).
            raise PermissionError(str(err) or type(err).__name__) from None
        if self._scope is not None:
            scope = claims.get("scope")
            granted = scope.split() if isinstance(scope, str) else []
            if self._scope not in granted:
                raise PermissionError(f"token lacks scope {self._scope}")
        return claims

    def receive(
        self,
        data: bytes | None,
        *,
        claims: Mapping[str, Any],
        transport: str,
        interaction: str,
    ) -> int:
        """Validate, apply the reject faults, store; return the number of events stored.

        Raises ValueError (relay.event.EventError is one) with the text to answer.
        """
        value = decode(data or b"")
        if isinstance(value, list):
            if not self.faults.accept_arrays:
                raise ValueError("a JSON array is not accepted: send one event per request")
            if not value:
                raise ValueError("the JSON array is empty")
            items = value
        else:
            items = [value]
        events = []
        for item in items:
            # Over RSocket the real service drops an event without logger_name (it cannot
            # route it to a topic); answering an error lets the sender notice. Over HTTP the
            # service defaults it to STATUS, as normalise does.
            if transport == "rsocket" and isinstance(item, dict) and "logger_name" not in item:
                raise ValueError("logger_name missing")
            events.append(normalise(item))
        if self.faults.rejects(events):
            raise ValueError(self.faults.reject_message)
        self.store.add(events, transport=transport, interaction=interaction, claims=claims)
        return len(events)

    def stats(self) -> dict:
        rs = self.rsocket
        return {
            **self.store.stats(),
            "rsocket": {
                "connections_open": rs.connections_open if rs else 0,
                "connections_total": rs.connections_total if rs else 0,
                "requests": rs.requests if rs else 0,
                "errors": rs.errors if rs else 0,
                "max_in_flight": rs.max_in_flight if rs else 0,
            },
            "http": {"requests": self.http_requests},
        }

    # -- transports -----------------------------------------------------------------------

    async def start_rsocket(self, host: str = "127.0.0.1", port: int = 7070) -> int:
        """Listen for RSocket over TCP; return the bound port (useful with port 0)."""
        if self.rsocket is not None:
            raise RuntimeError("the RSocket listener is already running")
        self.rsocket = await status_rsocket.start(host, port, self)
        return self.rsocket.port

    def add_routes(self, app: web.Application) -> None:
        status_http.add_routes(app, self)

    def http_app(self) -> web.Application:
        app = web.Application()
        self.add_routes(app)
        return app

    async def start_http(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve http_app() on host:port; return the bound port."""
        if self._http_runner is not None:
            raise RuntimeError("the HTTP listener is already running")
        runner = web.AppRunner(self.http_app())
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._http_runner = runner
        return runner.addresses[0][1]

    async def close(self) -> None:
        if self.rsocket is not None:
            await self.rsocket.close()
            self.rsocket = None
        if self._http_runner is not None:
            await self._http_runner.cleanup()
            self._http_runner = None
        self.store.close()
