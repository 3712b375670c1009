"""RELP input: acknowledged syslog, as rsyslog's omrelp sends it (librelp's ``doc/relp.md``).

The point of RELP over plain TCP syslog is the acknowledgement: a sender keeps every message
it has not had a ``rsp 200`` for, and sends it again after a reconnect. So the relay answers
``200`` for a message only once the spool commit that holds it is fsynced; whatever the relay
had read but not yet answered when it dies is resent, and the spool's dedup absorbs what was
stored twice (resent frames carry new transaction numbers, the events the same id).

- Frames that one read completes are stored as one batch (group commit with everything else
  being stored meanwhile); the connection is not read again until their answers are written,
  which bounds memory per connection to one batch.
- An invalid event is kept as a dead letter with its raw text and answered 200: answering 500
  would make rsyslog drop it by its own rules, without trace. The reason is logged once per
  kind; the counters in ``relay_rejected_events_total{source="relp"}`` say how many.
- While the spool refuses (full, failing disk) the answers are held and the connection is not
  read: the sender's window fills and it waits. After `refused_close_after` the connection is
  closed (one log line); librelp reconnects and resends.
- A frame that cannot be followed (malformed header, data length over the limit) is kept as a
  dead letter and the connection is closed: RELP has no way to find the next frame.
- On shutdown each connection gets the ``serverclose`` hint after its last answer.

The protocol itself (offers, answers, ordering) is in `relay.sources.relp_session`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from relay.config import RelpIngestConfig
from relay.sources.intake import Intake
from relay.sources.relp_listener import SOURCE, RelpListener
from relay.sources.relp_session import RelpSession
from relay.sources.syslog import HEADER_ALLOWANCE
from relay.sources.tls import ListenerTLS

__all__ = ["SOURCE", "RelpListener", "RelpSource", "start_relp"]

log = logging.getLogger("relay.sources.relp")


@dataclass
class RelpSource:
    """The running RELP listener (`listener` None when off)."""

    listener: RelpListener | None = None
    tls: ListenerTLS | None = field(default=None, repr=False)

    @property
    def port(self) -> int | None:
        return self.listener.port if self.listener is not None else None

    async def close(self) -> None:
        if self.listener is not None:
            await self.listener.close()


async def start_relp(
    cfg: RelpIngestConfig, intake: Intake, tls: ListenerTLS | None = None
) -> RelpSource:
    """Listen on `cfg.listen` (empty: off), with TLS when `tls` is given; raises UserError
    naming the setting when it cannot."""
    if not cfg.listen:
        return RelpSource()
    listener = RelpListener(
        intake,
        max_data=intake.max_event_bytes + HEADER_ALLOWANCE,
        max_connections=cfg.max_connections,
        refused_close_after=cfg.refused_close_after,
    )
    await listener.start(cfg.listen, tls, lambda: RelpSession(listener))
    shown = f"{listener.address} ({tls.describe()})" if tls is not None else listener.address
    log.info("relp: listening on %s", shown)
    return RelpSource(listener, tls)
