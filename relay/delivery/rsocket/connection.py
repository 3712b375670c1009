"""One RSocket connection to the status service, made safe to use.

rsocket-py leaves a request hanging forever when the connection dies under it, and reports a
keepalive timeout without closing anything. Here every request fails at once when the connection
is lost, and the connection closes itself on a keepalive timeout or an error on stream 0.

Request timeouts are not a timer per request (an `asyncio.timeout` costs a timer handle and a
reschedule each time, a sixth of the relay's time at full speed): each outstanding request keeps
its deadline, and one sweeper task fails the overdue ones a fraction of the timeout late at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from datetime import timedelta

from rsocket.error_codes import ErrorCode
from rsocket.extensions.mimetypes import WellKnownMimeTypes
from rsocket.payload import Payload
from rsocket.request_handler import BaseRequestHandler
from rsocket.rsocket_client import RSocketClient

from relay import supervision
from relay.delivery.proxy import Proxy
from relay.delivery.rsocket.transport import SingleWriteTCP
from relay.delivery.rsocket.tunnel import dial

log = logging.getLogger("relay.delivery.rsocket")


class ConnectionLost(Exception):
    """The connection died while the request was outstanding, or before it was sent."""


class _Handler(BaseRequestHandler):
    def __init__(self, connection: RSocketConnection) -> None:
        super().__init__()
        self._connection = connection

    async def on_error(self, error_code: ErrorCode, payload: Payload) -> None:
        # errors on stream 0 (REJECTED_SETUP, CONNECTION_ERROR, …) end the connection
        text = (payload.data or b"").decode("utf-8", "replace")
        self._connection.lost(f"{error_code.name}: {text}" if text else error_code.name)

    async def on_close(self, rsocket, exception: Exception | None = None) -> None:
        self._connection.lost("closed by the upstream")

    async def on_connection_error(self, rsocket, exception: Exception) -> None:
        self._connection.lost(f"connection error: {exception}")

    async def on_keepalive_timeout(self, time_since_last_keepalive: timedelta, rsocket) -> None:
        seconds = time_since_last_keepalive.total_seconds()
        self._connection.lost(f"no keepalive from the upstream for {seconds:.0f} s")


class RSocketConnection:
    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[str] = loop.create_future()
        self._time = loop.time
        self._pending: dict[asyncio.Future, float] = {}  # request → its deadline (loop time)
        self._timed_out: set[asyncio.Future] = set()  # cancelled by the sweeper
        self._client: RSocketClient | None = None
        self._sweeper: asyncio.Task | None = None
        self._closing: asyncio.Task | None = None

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        tls: bool,
        keepalive_interval: float,
        keepalive_max_lifetime: float,
        connect_timeout: float,
        sweep_every: float = 0.5,
        proxy: Proxy | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> RSocketConnection:
        """Connect (through `proxy`'s CONNECT tunnel when given, TLS inside it) and send SETUP;
        raises OSError (TunnelRefused when the proxy says no) or TimeoutError when the connect
        fails. A request fails with TimeoutError up to `sweep_every` seconds after its timeout.
        `ssl_context` replaces the system's trust store (tests)."""
        self = cls()
        reader, writer = await dial(
            host, port, tls=tls, proxy=proxy, timeout=connect_timeout, ssl_context=ssl_context
        )

        async def one_transport():
            yield SingleWriteTCP(reader, writer)

        self._client = RSocketClient(
            one_transport(),
            handler_factory=lambda: _Handler(self),
            metadata_encoding=WellKnownMimeTypes.MESSAGE_RSOCKET_COMPOSITE_METADATA,
            data_encoding=WellKnownMimeTypes.APPLICATION_JSON,
            keep_alive_period=_whole_seconds(keepalive_interval),
            max_lifetime_period=_whole_seconds(keepalive_max_lifetime),
        )
        await self._client.connect()
        self._sweeper = supervision.watch(
            asyncio.create_task(self._sweep(sweep_every), name="rsocket-timeouts"),
            "rsocket request-timeout sweeper",
        )
        return self

    @property
    def is_open(self) -> bool:
        return not self.closed.done()

    async def request(self, data: bytes, metadata: bytes, timeout: float) -> None:
        """Request-response; returns when the upstream acknowledged. Raises ConnectionLost,
        TimeoutError, RuntimeError (APPLICATION_ERROR) or RSocketProtocolError."""
        if self.closed.done():
            raise ConnectionLost(self.closed.result())
        future = self._client.request_response(Payload(data, metadata))
        self._pending[future] = self._time() + timeout
        try:
            await future
        except asyncio.CancelledError:
            timed_out = future in self._timed_out
            self._timed_out.discard(future)
            # a cancellation of this task itself (shutdown) stays a cancellation
            if timed_out and not asyncio.current_task().cancelling():
                raise TimeoutError from None
            raise
        finally:
            self._pending.pop(future, None)

    async def _sweep(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            now = self._time()
            overdue = [f for f, due in self._pending.items() if due <= now and not f.done()]
            for future in overdue:
                self._timed_out.add(future)
                future.cancel()  # rsocket-py sends CANCEL, so the upstream may drop the work

    def lost(self, reason: str) -> None:
        """Fail every outstanding request and close; the first reason given is kept."""
        if self.closed.done():
            return
        self.closed.set_result(reason)
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._client is not None:
            # through the library, so its own clean-up later finds the streams already ended
            with contextlib.suppress(Exception):
                self._client.stop_all_streams()
        for future in list(self._pending):
            if not future.done():
                future.set_exception(ConnectionLost(reason))
        self._pending.clear()
        self._closing = asyncio.get_running_loop().create_task(self._close_client())

    async def close(self) -> None:
        self.lost("closed by the relay")
        if self._closing is not None:
            # shielded: rsocket-py's clean-up catches every CancelledError while it waits for its
            # own tasks, so a cancellation passed into it would be lost and the caller (the sink's
            # supervisor at shutdown) would go on as if never cancelled
            await asyncio.shield(self._closing)

    async def _close_client(self) -> None:
        if self._client is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self._client.close()


def _whole_seconds(seconds: float) -> timedelta:
    # rsocket-py 0.4.20 counts the sub-second part twice when it writes SETUP (200 ms goes out
    # as 400 ms), so only whole seconds reach the wire as configured
    return timedelta(seconds=max(1, round(seconds)))
