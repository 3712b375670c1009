"""What the delivery loop asks of a sink (`Sink`) and what a sink answers for each request
(`Outcome`), in the terms the loop acts on."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


class Verdict(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"  # transient: the events go back to the spool and are sent again
    REJECTED = "rejected"  # the upstream refused these events: retried, then dead-lettered
    INVALID = "invalid"  # the upstream says they can never be accepted: dead-lettered at once


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    reason: str = ""  # short label for logs and metrics: "timeout", "connection", "token", …
    error: str = ""  # the upstream's own words, one line, when it gave any
    retry_after: float | None = None  # the upstream's hint, in seconds
    connection_lost: bool = False  # not the events' fault: retry at once on the next connection
    # nobody's fault and already being fixed (a refused token, a new one on its way): retry at
    # once and do not slow delivery down for it
    retry_now: bool = False


DELIVERED = Outcome(Verdict.DELIVERED)


class Sink(Protocol):
    async def start(self) -> None: ...

    async def wait_ready(self) -> None:
        """Return when a request may be sent (for RSocket: a connection is up)."""

    async def send(self, bodies: list[bytes]) -> Outcome:
        """One request carrying these events (one, or a JSON array when batching). Never raises
        for upstream trouble and never hangs: every failure becomes an Outcome."""

    def not_ready(self) -> str | None:
        """A configuration problem the upstream reported (e.g. a missing scope), or None."""

    @property
    def connected(self) -> bool: ...

    down_since: float | None  # wall time the upstream became unreachable, None while it answers

    async def close(self) -> None: ...
