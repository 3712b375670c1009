"""The RELP listening socket and what its connections share: the connection limit, storing with
a bound on how long answers are held, and the log lines (see `relay.sources.relp`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from relay.config import parse_listen
from relay.errors import UserError
from relay.sources.intake import Intake
from relay.sources.syslog import syslog_converter
from relay.sources.tcp import REFUSED_QUIET, RETRY_MAX, Convert, Item, Refusals, show_address
from relay.sources.tls import HANDSHAKE_TIMEOUT, ListenerTLS
from relay.spool import Incoming, Reject, SpoolFull, SpoolRefused

__all__ = ["SETTING", "SOURCE", "RelpListener"]

log = logging.getLogger("relay.sources.relp")

SOURCE = "relp"
SETTING = "ingest.relp.listen"
# How long shutdown waits for a batch being stored before it closes the connections regardless.
CLOSE_WAIT = 5.0


class Session(Protocol):
    """What the listener needs of a connection (relay.sources.relp_session.RelpSession)."""

    closed: asyncio.Future[None]

    def stop(self) -> None: ...

    def abort(self) -> None: ...


class RelpListener:
    """The listening socket and what its connections share: limits, storing, logging."""

    def __init__(
        self,
        intake: Intake,
        *,
        max_data: int,
        max_connections: int = 1024,
        refused_close_after: float = 30.0,
        retry_max: float = RETRY_MAX,
    ) -> None:
        self.intake = intake
        self.source = SOURCE
        self.max_data = max_data
        self.max_connections = max_connections
        self.refused_close_after = refused_close_after
        self.retry_max = retry_max
        self.convert: Convert = syslog_converter(intake, SOURCE)
        self.port: int | None = None
        self.address = ""
        # connections closed at once because max_connections were open (since start)
        self.refused_connections = 0
        # connections closed because their framing could not be followed (since start)
        self.broken_connections = 0
        # connections closed because the spool refused for refused_close_after (since start)
        self.held_too_long = 0
        self.sessions: set[Session] = set()
        self.closing = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._refused_at = -REFUSED_QUIET
        self._broken_logged = -REFUSED_QUIET
        self._dead_letter_kinds: set[str] = set()
        self._refusals = Refusals(SOURCE, "holding the answers and reading no more until it does")

    @property
    def connections(self) -> int:
        return len(self.sessions)

    async def start(
        self,
        listen: str,
        tls: ListenerTLS | None,
        session: Callable[[], asyncio.Protocol],
    ) -> None:
        """Listen on `listen`, each connection served by a new `session()`; raises UserError
        naming the setting when it cannot."""
        host, port = parse_listen(listen, SETTING)
        loop = asyncio.get_running_loop()
        context = tls.context if tls is not None else None
        try:
            self._server = await loop.create_server(
                session,
                host,
                port,
                reuse_address=True,
                ssl=context,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT if context is not None else None,
            )
        except OSError as exc:
            raise UserError(
                f"cannot listen on {listen} ({SETTING}): {exc.strerror or exc}; "
                "choose a free address"
            ) from None
        self.port = self._server.sockets[0].getsockname()[1]
        self.address = show_address(host, self.port)
        self.intake.declare(SOURCE)

    async def close(self) -> None:
        """Stop accepting; let each connection finish the batch it is storing, answer it, send
        the serverclose hint and close. What was read but not answered, the senders resend."""
        if self._server is not None:
            self._server.close()
        self.closing.set()
        sessions = list(self.sessions)
        for session in sessions:
            session.stop()
        if sessions:
            waiting = asyncio.gather(*(s.closed for s in sessions))
            try:
                async with asyncio.timeout(CLOSE_WAIT):
                    await asyncio.shield(waiting)
            except TimeoutError:
                log.warning("relp: %d connection(s) did not finish in time", len(sessions))
                for session in sessions:
                    session.abort()
        if self._server is not None:
            await self._server.wait_closed()

    # -- what the sessions share -----------------------------------------------------------------

    def admit(self) -> bool:
        """Whether a new connection may stay open; counts and logs (once a burst) when not."""
        if self.closing.is_set():
            return False
        if len(self.sessions) < self.max_connections:
            return True
        self.refused_connections += 1
        now = time.monotonic()
        if now - self._refused_at >= REFUSED_QUIET:
            log.warning(
                "relp: %d connections are open, the limit (ingest.relp.max_connections); new "
                "connections are closed at once (%d so far). Raise the limit if these are "
                "senders, not a flood",
                len(self.sessions),
                self.refused_connections,
            )
        self._refused_at = now
        return False

    def broken(self, peer: str, problem: str) -> None:
        """A connection closed because its framing could not be followed (logged at most once
        per REFUSED_QUIET; each one is also a dead letter with the reason)."""
        self.broken_connections += 1
        now = time.monotonic()
        if now - self._broken_logged >= REFUSED_QUIET:
            self._broken_logged = now
            log.warning(
                "relp: closed the connection from %s: %s (kept as a dead letter; %d such "
                "connection(s) so far)",
                peer,
                problem,
                self.broken_connections,
            )

    def dead_lettered(self, rejects: list[Reject], peer: str) -> None:
        """Log the first dead letter of each kind; later ones are only counted."""
        for reject in rejects:
            if reject.reason in self._dead_letter_kinds:
                continue
            self._dead_letter_kinds.add(reject.reason)
            log.warning(
                "relp: a message from %s is not a valid status event (%s); kept as a dead "
                "letter (%s) and acknowledged. Further ones of this kind are counted in "
                'relay_rejected_events_total{source="relp"} without a log line',
                peer,
                reject.error,
                reject.reason,
            )

    async def store(self, items: list[Item], peer: str) -> int:
        """Store `items` in order, retrying while the spool refuses; how many of them (from the
        start) are stored. Fewer than all when the spool refused for refused_close_after, or
        when the relay shuts down meanwhile: the caller answers those and closes."""
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
                await self.intake.submit(SOURCE, events, rejects, retry=retry)
            except SpoolRefused as exc:
                now = time.monotonic()
                refused_since = now if refused_since is None else refused_since
                self._refusals.refused(exc, len(chunk))
                refused_upto = max(refused_upto, start + len(chunk))
                if self.closing.is_set():
                    return start
                if now - refused_since >= self.refused_close_after:
                    self.held_too_long += 1
                    log.warning(
                        "relp: closed the connection from %s after holding %d answer(s) for "
                        "%.0f s while the spool refuses (%s); the sender resends them when it "
                        "reconnects",
                        peer,
                        len(items) - start,
                        now - refused_since,
                        exc,
                    )
                    return start
                if isinstance(exc, SpoolFull):
                    size = max(1, len(chunk) // 2)  # less may fit where all did not
                wait = min(exc.retry_after, self.retry_max)
                await self._pause(min(wait, refused_since + self.refused_close_after - now))
                continue
            self._refusals.stored()
            if rejects:
                self.dead_lettered(rejects, peer)
            start += len(chunk)
        return start

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(seconds, 0.001)):
                await self.closing.wait()
