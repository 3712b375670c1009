"""The RELP listening socket and what its connections share: the connection limit, storing with
a bound on how long answers are held, and the log lines (see `relay.sources.relp`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from relay.sources.intake import Intake
from relay.sources.listening import RETRY_MAX, Listening
from relay.sources.syslog import syslog_converter
from relay.sources.tcp import Convert
from relay.sources.tls import ListenerTLS
from relay.spool import Reject

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


class RelpListener(Listening):
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
        super().__init__(
            intake,
            source=SOURCE,
            setting=SETTING,
            max_connections=max_connections,
            retry_max=retry_max,
            refusal_consequence="holding the answers and reading no more until it does",
        )
        self.max_data = max_data
        self.refused_close_after = refused_close_after
        self.convert: Convert = syslog_converter(intake, SOURCE)
        self.sessions: set[Session] = set()
        self._dead_letter_kinds: set[str] = set()

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
        await self.listen(listen, tls.context if tls is not None else None, session)

    async def close(self) -> None:
        """Stop accepting; let each connection finish the batch it is storing, answer it, send
        the serverclose hint and close. What was read but not answered, the senders resend."""
        self.stop_listening()
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
        await self.wait_closed()

    # -- what the sessions share -----------------------------------------------------------------

    def stored(self, rejects: list[Reject], peer: str) -> None:
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
