"""What every TCP listener shares (syslog and JSON lines in `relay.sources.tcp`, RELP in
`relay.sources.relp_listener`): the listening socket with its TLS handshakes, the connection
limit, storing a batch while the spool refuses, and the log lines about all three.

Storing keeps order and never drops: a refused batch is retried (halved when the spool is full,
since less may fit where all did not) until it is stored, until the relay shuts down, or, for a
listener that holds its senders' answers (RELP), until it has been held `hold_limit` seconds; the
caller learns how many items were stored and decides what the rest means for its protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable

from relay.config import parse_listen
from relay.errors import UserError
from relay.sources.intake import Intake
from relay.sources.refusals import Refusals
from relay.sources.tls_handshakes import TlsHandshakes
from relay.spool import Incoming, Reject, SpoolFull, SpoolRefused

__all__ = ["REFUSED_QUIET", "RETRY_MAX", "Item", "Listening", "show_address"]

log = logging.getLogger("relay.sources.tcp")  # where these lines have always come from

# The spool suggests 5 s; a TCP sender is blocked while we wait, so look again sooner.
RETRY_MAX = 1.0
# Connections refused over the limit within this long of each other are one burst: one log line.
# Connections closed for broken framing are logged at most this often.
REFUSED_QUIET = 10.0

Item = Incoming | Reject


def show_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Listening:
    """One listening socket feeding `intake` as `source`; subclasses serve the connections."""

    def __init__(
        self,
        intake: Intake,
        *,
        source: str,
        setting: str,
        max_connections: int,
        retry_max: float,
        refusal_consequence: str,
    ) -> None:
        self.intake = intake
        self.source = source
        self.setting = setting  # "ingest.relp.listen": named in errors and log lines
        self.max_connections = max_connections
        self.retry_max = retry_max
        # connections closed at once because max_connections were open (since start)
        self.refused_connections = 0
        # connections closed because their framing could not be followed (since start)
        self.broken_connections = 0
        # connections closed because the spool refused for longer than answers are held
        self.held_too_long = 0
        self.port: int | None = None
        self.address = ""  # host:port once listening
        self.closing = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tls = TlsHandshakes(None, max_connections)  # handshakes, once started with TLS
        self._refused_at = -REFUSED_QUIET
        self._broken_logged = -REFUSED_QUIET
        self._refusals = Refusals(source, refusal_consequence)

    @property
    def connections(self) -> int:
        """Connections open now; each subclass keeps its own set of them."""
        raise NotImplementedError

    async def listen(
        self,
        listen: str,
        tls: ssl.SSLContext | None,
        factory: Callable[[], asyncio.Protocol],
    ) -> None:
        """Listen on `listen` ("host:port"), with TLS when `tls` is given, each connection
        served by a new `factory()`; raises UserError naming the setting."""
        host, port = parse_listen(listen, self.setting)
        # with TLS, handshakes are bounded and counted (relay.sources.tls_handshakes): a
        # connection reaches the protocol, and takes one of max_connections, only once its
        # handshake is done
        self._tls = TlsHandshakes(tls, self.max_connections)
        try:
            self._server = await asyncio.get_running_loop().create_server(
                self._tls.wrap(factory), host, port, reuse_address=True
            )
        except OSError as exc:
            raise UserError(
                f"cannot listen on {listen} ({self.setting}): {exc.strerror or exc}; "
                "choose a free address"
            ) from None
        self.port = self._server.sockets[0].getsockname()[1]
        self.address = show_address(host, self.port)
        self.intake.declare(self.source)

    def stop_listening(self) -> None:
        """Accept no more connections; the open ones are the subclass's to finish."""
        if self._server is not None:
            self._server.close()
        self._tls.close()
        self.closing.set()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()

    def admit(self) -> bool:
        """Whether a new connection may stay open; counts and logs (once a burst) when not."""
        if self.closing.is_set():
            return False  # accepted just as the listener closed
        if self.connections < self.max_connections:
            return True
        self.refused_connections += 1
        now = time.monotonic()
        if now - self._refused_at >= REFUSED_QUIET:
            limit = self.setting.rsplit(".", 1)[0] + ".max_connections"
            log.warning(
                "%s: %d connections are open, the limit (%s); new connections are closed at "
                "once (%d so far). Raise the limit if these are senders, not a flood",
                self.source,
                self.connections,
                limit,
                self.refused_connections,
            )
        self._refused_at = now
        return False

    def broken(self, peer: str, problem: str) -> None:
        """A connection closed because its framing could not be followed: counted, and logged
        at most once per REFUSED_QUIET (each one is also a dead letter with the reason)."""
        self.broken_connections += 1
        now = time.monotonic()
        if now - self._broken_logged >= REFUSED_QUIET:
            self._broken_logged = now
            log.warning(
                "%s: closed the connection from %s: %s (kept as a dead letter; %d such "
                "connection(s) so far)",
                self.source,
                peer,
                problem,
                self.broken_connections,
            )

    async def store(self, items: list[Item], peer: str, *, hold_limit: float | None = None) -> int:
        """Store `items` in order, retrying while the spool refuses; returns how many (from the
        start) were stored: all of them, or fewer when the relay shut down meanwhile or the
        spool refused for `hold_limit` seconds (both logged here)."""
        start = 0
        size = len(items)
        refused_upto = 0  # items before this were counted when first refused
        refused_since: float | None = None
        while start < len(items):
            chunk = items[start : start + size]
            events = [i for i in chunk if isinstance(i, Incoming)]
            rejects = [i for i in chunk if isinstance(i, Reject)]
            retry = start + len(chunk) <= refused_upto
            try:
                await self.intake.submit(self.source, events, rejects, retry=retry)
            except SpoolRefused as exc:
                now = time.monotonic()
                refused_since = now if refused_since is None else refused_since
                if self.closing.is_set():
                    log.warning(
                        "%s: %d frame(s) read from %s were not stored at shutdown: %s",
                        self.source,
                        len(items) - start,
                        peer,
                        exc,
                    )
                    return start
                self._refusals.refused(exc, len(chunk))
                refused_upto = max(refused_upto, start + len(chunk))
                wait = min(exc.retry_after, self.retry_max)
                if hold_limit is not None:
                    if now - refused_since >= hold_limit:
                        self._held_too_long(peer, len(items) - start, now - refused_since, exc)
                        return start
                    wait = min(wait, refused_since + hold_limit - now)
                if isinstance(exc, SpoolFull):
                    size = max(1, len(chunk) // 2)  # less may fit where all did not
                await self._pause(wait)
                continue
            self._refusals.stored()
            self.stored(rejects, peer)
            start += len(chunk)
        return start

    def stored(self, rejects: list[Reject], peer: str) -> None:
        """Told of the dead letters of each stored chunk; a subclass may log them."""

    def _held_too_long(self, peer: str, held: int, seconds: float, exc: SpoolRefused) -> None:
        self.held_too_long += 1
        log.warning(
            "%s: closed the connection from %s after holding %d answer(s) for %.0f s while the "
            "spool refuses (%s); the sender resends them when it reconnects",
            self.source,
            peer,
            held,
            seconds,
            exc,
        )

    async def _pause(self, seconds: float) -> None:
        # asyncio.timeout: 3.11's wait_for can swallow a cancellation arriving with the event
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(seconds, 0.001)):
                await self.closing.wait()
