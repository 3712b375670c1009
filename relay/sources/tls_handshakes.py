"""TLS handshakes on the listeners: bounded, and counted when they fail.

asyncio's own ``create_server(ssl=...)`` hands a connection to the protocol only once its
handshake is done, and a failed handshake vanishes without a trace: no count, and no bound on
how many run at once (each holds a socket for up to the handshake timeout). `TlsHandshakes` puts
asyncio's same TLS protocol in front of a listener's protocol factory itself, so that it can do
both; the HTTP listener runs its handshakes in tasks of its own and reports failures through
`handshake_failed`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from asyncio import sslproto
from collections.abc import Callable

from relay.sources import tls
from relay.sources.tls import ListenerContext, failure_reason

__all__ = ["TlsHandshakes", "handshake_failed"]

log = logging.getLogger("relay.sources.tls")

BUSY_QUIET = 10.0  # handshakes refused over the limit within this long: one warning line


def handshake_failed(context: ssl.SSLContext | None, peer: object, exc: BaseException) -> None:
    """Count and log (at debug: a scanner must not flood the log; the counter shows a trend) a
    TLS handshake that failed on the listener of `context`."""
    section = "a TLS listener"
    if isinstance(context, ListenerContext):
        context.handshake_failures += 1
        section = context.section
    peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "?")
    log.debug("%s: TLS handshake with %s failed: %s", section, peer_text, failure_reason(exc))


class TlsHandshakes:
    """TLS in front of a protocol factory for `loop.create_server` (without its `ssl=`).

    asyncio's own `ssl=` hands a connection to the protocol only once its handshake is done, and
    a failed handshake vanishes without a trace. Here each handshake is counted while it runs:
    at most `limit` at a time (a flood of silent clients holds at most that many sockets, each
    for at most HANDSHAKE_TIMEOUT; over it, a new connection is closed at once), and a failure
    is counted and logged by `handshake_failed`. The protocol made by the wrapped factory sees
    `connection_made` after a good handshake, exactly as with `ssl=`.
    """

    def __init__(self, context: ssl.SSLContext | None, limit: int) -> None:
        self.context = context  # None: plain TCP, `wrap` leaves the factory as it is
        self.limit = limit
        self.refused = 0  # connections closed at once because `limit` handshakes were running
        self._running: set[_Handshake] = set()
        self._warned_at = -BUSY_QUIET

    @property
    def running(self) -> int:
        """Handshakes in progress now."""
        return len(self._running)

    def wrap(
        self, factory: Callable[[], asyncio.BaseProtocol]
    ) -> Callable[[], asyncio.BaseProtocol]:
        if self.context is None:
            return factory
        return lambda: self._protocol(factory)

    def close(self) -> None:
        """Abort the handshakes still running: the listener is closing."""
        for handshake in list(self._running):
            handshake.abort()

    def _protocol(self, factory: Callable[[], asyncio.BaseProtocol]) -> asyncio.BaseProtocol:
        assert self.context is not None
        if len(self._running) >= self.limit:
            self.refused += 1
            now = time.monotonic()
            if now - self._warned_at >= BUSY_QUIET:  # once a burst: a flood must not flood
                self._warned_at = now
                log.warning(
                    "%s: %d TLS handshakes are running, the limit (max_connections); new "
                    "connections are closed at once (%d so far): clients that connect and say "
                    "nothing, or more senders than the limit",
                    getattr(self.context, "section", "a TLS listener"),
                    len(self._running),
                    self.refused,
                )
            return _Refused(self.context)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        handshake = _Handshake(
            loop,
            factory(),
            self.context,
            waiter,
            server_side=True,
            ssl_handshake_timeout=tls.HANDSHAKE_TIMEOUT,
        )
        self._running.add(handshake)
        waiter.add_done_callback(lambda done: self._done(handshake, done))
        return handshake  # type: ignore[return-value]  # a BufferedProtocol, as asyncio takes

    def _done(self, handshake: _Handshake, done: asyncio.Future[None]) -> None:
        self._running.discard(handshake)
        # no exception: the handshake succeeded, or the peer went away before it said anything
        # (a port check), which is not a TLS failure
        exc = None if done.cancelled() else done.exception()
        if exc is not None:
            handshake_failed(self.context, handshake.peer, exc)


class _Handshake(sslproto.SSLProtocol):
    """asyncio's own TLS protocol (what `create_server(ssl=...)` uses), remembering its socket
    transport so that a closing listener can abort a handshake still running."""

    raw: asyncio.BaseTransport | None = None
    peer: object = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = transport
        self.peer = transport.get_extra_info("peername")
        super().connection_made(transport)

    def abort(self) -> None:
        if isinstance(self.raw, asyncio.Transport):
            self.raw.abort()


class _Refused(asyncio.Protocol):
    """A connection over the limit of handshakes at a time: closed at once, counted as failed."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.abort()
        busy = ConnectionRefusedError("too many TLS handshakes at once (max_connections)")
        handshake_failed(self._context, transport.get_extra_info("peername"), busy)
