"""RSocket (TCP) side of the status-service stand-in: route ``log-fire``.

rsocket-py turns a handler future that fails with anything but RSocketProtocolError into an
ERROR frame APPLICATION_ERROR (0x201) whose data is str(exception); its client raises that as
RuntimeError(text). We fail futures with RSocketApplicationError(text) to get exactly that.

The service's handler returns Mono<Void>, so a request-response is acknowledged by a PAYLOAD
frame with COMPLETE only (no NEXT, no data); rsocket-py would send NEXT|COMPLETE for an empty
Payload, so _Server sends the _ACK marker without NEXT.

rsocket-py awaits each handler call inside its frame-reading loop, so a request that has to
wait (the delay fault) runs in its own task and the handler returns at once: a slow request
must not hold up the others on the connection. Without a delay it is served on the spot.

rsocket-py's TCP transport reads 1 KiB at a time (less than one request with its token) and
makes a send system call per answer; SingleWriteTCP reads 64 KiB and writes the answers queued
together at once. The bytes on the wire are the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from rsocket.error_codes import ErrorCode
from rsocket.exceptions import RSocketApplicationError, RSocketProtocolError
from rsocket.frame import (
    CONNECTION_STREAM_ID,
    ErrorFrame,
    Frame,
    KeepAliveFrame,
)
from rsocket.payload import Payload
from rsocket.request_handler import BaseRequestHandler
from rsocket.rsocket_server import RSocketServer

from relay.delivery.rsocket.transport import SingleWriteTCP
from relay.dev.rsocket_metadata import MetadataError, parse_metadata
from relay.dev.status_service import StatusServiceStandIn

__all__ = ["NAME", "ROUTE", "RSocketStandIn", "start"]

log = logging.getLogger("relay.dev.status_rsocket")

# The key of this transport's counters in the service's stats.
NAME = "rsocket"
ROUTE = "log-fire"
COMPOSITE_MIME = b"message/x.rsocket.composite-metadata.v0"
JSON_MIME = b"application/json"

# The attributes reported by counters(), in the order /api/stats has always shown them.
_COUNTERS = ("connections_open", "connections_total", "requests", "errors", "max_in_flight")

# How long to wait for a last frame (REJECTED_SETUP, the final answer) to leave before closing.
_FLUSH_TIMEOUT = 1.0


# Returned by the handler for "acknowledge": sent as COMPLETE without NEXT (identity matters).
_ACK = Payload()

_REJECT_CODES = {"REJECTED": ErrorCode.REJECTED, "INVALID": ErrorCode.INVALID}


class _Server(RSocketServer):
    def send_payload(
        self, stream_id: int, payload: Payload, complete: bool = False, is_next: bool = True
    ) -> None:
        if payload is _ACK:
            is_next = False
        super().send_payload(stream_id, payload, complete, is_next)


class RSocketStandIn:
    """The listening server; ``port`` is the bound port. Counters are read by tests and stats."""

    def __init__(self, service: StatusServiceStandIn) -> None:
        self.service = service
        self.port = 0
        self.connections_total = 0
        self.requests = 0
        self.errors = 0
        self.in_flight = 0  # requests being served now, over all connections
        self.max_in_flight = 0  # the most ever served at once: tests check the relay's bound
        self._connections: set[RSocketServer] = set()
        self._server: asyncio.Server | None = None
        self._closing = False

    @property
    def connections_open(self) -> int:
        return len(self._connections)

    def counters(self) -> dict[str, int]:
        """What the service's stats report for this transport (see StatusServiceStandIn)."""
        return {name: getattr(self, name) for name in _COUNTERS}

    async def listen(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._accept, host, port)
        self.port = self._server.sockets[0].getsockname()[1]

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing:
            writer.close()
            return
        handler = _ConnectionHandler(self)
        handler.socket = _Server(SingleWriteTCP(reader, writer), handler_factory=lambda: handler)
        self._connections.add(handler.socket)
        self.connections_total += 1

    def _forget(self, socket: RSocketServer) -> None:
        self._connections.discard(socket)

    async def close(self) -> None:
        """Stop listening and close every client connection."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for socket in list(self._connections):
            await _close_quietly(socket)
        self._connections.clear()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


class _ConnectionHandler(BaseRequestHandler):
    """One per connection (rsocket-py calls the factory once per RSocketServer)."""

    def __init__(self, owner: RSocketStandIn) -> None:
        super().__init__()
        self.owner = owner
        self.socket: RSocketServer | None = None
        self.answered = 0
        self._setup_ok = False
        self._closing = False
        self._tasks: set[asyncio.Task] = set()
        # Kept apart from _tasks: on_close cancels those, and it runs in the middle of this.
        self._close_task: asyncio.Task | None = None

    async def on_setup(
        self, data_encoding: bytes, metadata_encoding: bytes, payload: Payload
    ) -> None:
        if metadata_encoding != COMPOSITE_MIME:
            self._reject_setup(
                f"metadata MIME must be {COMPOSITE_MIME.decode()}, "
                f"got {metadata_encoding.decode('ascii', 'replace')}"
            )
        elif data_encoding != JSON_MIME:
            self._reject_setup(
                f"data MIME must be {JSON_MIME.decode()}, "
                f"got {data_encoding.decode('ascii', 'replace')}"
            )
        else:
            self._setup_ok = True

    def _reject_setup(self, reason: str) -> None:
        # Not raised: rsocket-py would send REJECTED_SETUP but keep the connection open.
        log.info("rejected SETUP: %s", reason)
        frame = ErrorFrame()
        frame.stream_id = CONNECTION_STREAM_ID
        frame.error_code = ErrorCode.REJECTED_SETUP
        frame.data = reason.encode()
        self._close_after(frame)

    async def request_response(self, payload: Payload) -> asyncio.Future:
        answer = self._spawn(payload, "request-response")
        answer.add_done_callback(self._answered)
        return answer

    async def request_fire_and_forget(self, payload: Payload) -> None:
        answer = self._spawn(payload, "fire-and-forget")
        answer.add_done_callback(self._fnf_done)

    async def on_close(self, rsocket: RSocketServer, exception: Exception | None = None) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        self.owner._forget(rsocket)

    def _spawn(self, payload: Payload, interaction: str) -> asyncio.Future:
        """The answer's future: done at once unless the delay fault asks for waiting."""
        owner = self.owner
        owner.requests += 1
        owner.in_flight += 1
        owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
        if owner.service.faults.delay <= 0:
            # Nothing to wait for: a task per request would cost more than serving it.
            answer = asyncio.get_running_loop().create_future()
            try:
                answer.set_result(self._serve_now(payload, interaction))
            except Exception as err:
                answer.set_exception(err)
            finally:
                owner.in_flight -= 1
            return answer
        task = asyncio.create_task(self._serve_later(payload, interaction))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._served)
        return task

    def _served(self, _: asyncio.Task) -> None:
        self.owner.in_flight -= 1

    async def _serve_later(self, payload: Payload, interaction: str) -> Payload:
        await asyncio.sleep(self.owner.service.faults.delay)
        return self._serve_now(payload, interaction)

    def _serve_now(self, payload: Payload, interaction: str) -> Payload:
        service = self.owner.service
        try:
            if not self._setup_ok:
                raise RSocketProtocolError(ErrorCode.REJECTED, "no accepted SETUP")
            try:
                tags, token = parse_metadata(payload.metadata)
            except MetadataError as err:
                raise RSocketApplicationError(f"Invalid composite metadata: {err}") from None
            try:
                claims = service.authorise(token)
            except PermissionError as err:
                raise RSocketApplicationError(str(err)) from None
            destination = tags[0] if tags else ""
            if destination != ROUTE:
                raise RSocketApplicationError(f"No handler for destination '{destination}'")
            try:
                service.receive(
                    payload.data, claims=claims, transport="rsocket", interaction=interaction
                )
            except ValueError as err:
                # only the reject faults get here: the service itself acks whatever the data
                code = _REJECT_CODES.get(service.faults.reject_code)
                if code is None:
                    raise RSocketApplicationError(str(err)) from None
                raise RSocketProtocolError(code, str(err)) from None
        except (RSocketApplicationError, RSocketProtocolError) as err:
            self.owner.errors += 1
            log.info("%s refused: %s", interaction, err)
            raise
        return _ACK

    def _fnf_done(self, task: asyncio.Future) -> None:
        if not task.cancelled():
            task.exception()  # already logged and counted in _serve_now; mark it retrieved
        self._answered(task)

    def _answered(self, task: asyncio.Future) -> None:
        if task.cancelled():
            return
        self.answered += 1
        limit = self.owner.service.faults.drop_after
        if 0 < limit <= self.answered and not self._closing:
            log.info("dropping connection after %d answered requests (drop_after)", self.answered)
            # Deferred one loop step: rsocket-py's own done callback, which queues the answer,
            # was registered after ours and must run first, so the answer leaves before the drop.
            asyncio.get_running_loop().call_soon(self._drop)

    def _drop(self) -> None:
        # KEEPALIVE without the respond flag is ignored by a client: a harmless marker that
        # tells when everything queued before it (the last answer) has been written.
        self._close_after(KeepAliveFrame())

    def _close_after(self, frame: Frame) -> None:
        if self._closing or self.socket is None:
            return
        self._closing = True
        frame.sent_future = asyncio.get_running_loop().create_future()
        self.socket.send_frame(frame)
        self._close_task = asyncio.create_task(self._flush_and_close(frame.sent_future))

    async def _flush_and_close(self, sent: asyncio.Future) -> None:
        # shield: rsocket-py's sender calls set_result on it later, which would raise in
        # the sender if wait_for had cancelled it.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(sent), _FLUSH_TIMEOUT)
        if self.socket is not None:
            self.owner._forget(self.socket)
            await _close_quietly(self.socket)


async def _close_quietly(socket: RSocketServer) -> None:
    try:
        await socket.close()
    except Exception:
        log.debug("error while closing an RSocket connection", exc_info=True)


async def start(host: str, port: int, service: StatusServiceStandIn) -> RSocketStandIn:
    """Listen on host:port (0 = any free port) for ``service`` and register it for its stats;
    see RSocketStandIn.port."""
    server = RSocketStandIn(service)
    await server.listen(host, port)
    service.listeners[NAME] = server
    return server
