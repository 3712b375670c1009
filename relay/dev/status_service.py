"""A stand-in for eFormidling's status service: real sockets, real checks, a SQLite record.

It answers like the service documented in shared/reference/upstream-protocol.md (RSocket route
``log-fire`` and ``POST /api/status``), stores what it accepted so tests and demos can look,
and has fault switches (relay.dev.faults) to play an unhealthy upstream.

The transports (status_rsocket, status_http) share the rules here and only translate
outcomes: PermissionError means "access denied", ValueError means "the request is refused"
and carries the text to send back.

A sender uses one token for many requests, so each distinct token is verified once
(signature verification was over half the stand-in's CPU) and afterwards only its expiry is
checked; an expired token goes back through verify_token, which refuses it with its own text.
In ack-only mode (for benchmarks) accepted requests are validated and counted, not stored.
"""

from __future__ import annotations

import time
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

# Senders hold one token at a time, renewed before it expires: a few entries cover them all.
_VERIFIED_TOKENS = 8


class StatusServiceStandIn:
    def __init__(
        self,
        *,
        store_path: Path,
        verify_token: VerifyToken,
        faults: StatusFaults | None = None,
        scope: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.faults = faults if faults is not None else StatusFaults()
        self.store = StatusStore(store_path)
        self.rsocket: status_rsocket.RSocketStandIn | None = None
        self.http_requests = 0
        self.acked = AckCounter(clock)
        self._verify_token = verify_token
        self._verified: dict[str, Mapping[str, Any]] = {}
        self._clock = clock
        self._scope = scope
        self._http_runner: web.AppRunner | None = None

    # -- the rules shared by both transports --------------------------------------------

    def authorise(self, token: str | None) -> Mapping[str, Any]:
        """The token's claims; PermissionError(reason) when it is missing or not acceptable."""
        if not token:
            raise PermissionError("no bearer token")
        claims = self._verified.get(token)
        if claims is None or not claims["exp"] > self._clock():
            claims = self._verify(token)
        if self._scope is not None:
            scope = claims.get("scope")
            granted = scope.split() if isinstance(scope, str) else []
            if self._scope not in granted:
                raise PermissionError(f"token lacks scope {self._scope}")
        return claims

    def _verify(self, token: str) -> Mapping[str, Any]:
        self._verified.pop(token, None)
        try:
            claims = self._verify_token(token)
        except Exception as err:
            # verify_token may raise anything; its text is the reason (never the token).
            raise PermissionError(str(err) or type(err).__name__) from None
        exp = claims.get("exp")
        # Without a numeric exp there is no way to tell when to verify again: never cached.
        if type(exp) in (int, float):
            if len(self._verified) >= _VERIFIED_TOKENS:
                del self._verified[next(iter(self._verified))]  # the oldest
            self._verified[token] = claims
        return claims

    def receive(
        self,
        data: bytes | None,
        *,
        claims: Mapping[str, Any],
        transport: str,
        interaction: str,
    ) -> int:
        """Validate, apply the reject faults, store (unless ack-only); return the event count.

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
        if not self.faults.ack_only:
            self.store.add(events, transport=transport, interaction=interaction, claims=claims)
        self.acked.add(len(events))
        return len(events)

    def stats(self) -> dict:
        """Counters; the store's figures only when storing (ack-only mode answers without SQL)."""
        rs = self.rsocket
        return {
            **({} if self.faults.ack_only else self.store.stats()),
            "acked": self.acked.as_dict(),
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


class AckCounter:
    """Requests and events accepted since start or the last reset, with when the first and the
    last of them were (Unix times, None before the first): a sender's rate, timed here."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.events = 0
        self.first_at: float | None = None
        self.last_at: float | None = None

    def add(self, events: int) -> None:
        now = self._clock()
        if self.first_at is None:
            self.first_at = now
        self.last_at = now
        self.requests += 1
        self.events += events

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "events": self.events,
            "first_at": self.first_at,
            "last_at": self.last_at,
        }
