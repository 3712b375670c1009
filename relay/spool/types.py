"""The spool's narrow interface: what sources and delivery may ask of any backend.

Nothing outside `relay.spool` touches SQLite, so that a replicated backend (NATS JetStream, say)
can implement the same protocol for deployments that outgrow one host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol


class SpoolRefused(Exception):
    """The spool did not store the events; the producer must not be told they were accepted."""

    retry_after: int = 5


class SpoolFull(SpoolRefused):
    """Storing the events would exceed `spool.max_bytes`; old events are never dropped for new."""


class SpoolUnavailable(SpoolRefused):
    """The write failed (disk full, I/O error, failed fsync); nothing of it was committed."""


@dataclass(frozen=True, slots=True)
class Incoming:
    """One valid, normalised event to store: its canonical bytes and the source it came from."""

    body: bytes
    source: str


@dataclass(frozen=True, slots=True)
class Reject:
    """Input that is not a valid event, kept in the dead-letter table so nothing sent is lost.

    `raw` and `error` must already be scrubbed of personal numbers.
    """

    raw: str
    error: str
    source: str
    reason: str = "invalid"


@dataclass(frozen=True, slots=True)
class AppendResult:
    accepted: int
    duplicates: int
    dead_lettered: int
    # Rejects not stored because invalid input fills its share of the spool (NOT_KEPT): always
    # the last `not_kept` of the call's `rejects`, in order. The call's valid events are stored
    # all the same; the source tells the producer that these items were neither stored nor kept.
    not_kept: int = 0


NOT_KEPT = (
    "not kept: invalid input fills its share of the spool (10% of spool.max_bytes); "
    "fix the producer, or see `relay dlq list` and `relay dlq purge`"
)


class Leased(NamedTuple):
    """An event handed to delivery; it stays in the spool until acked, released or dead-lettered.

    A NamedTuple, so that the spool builds one per row cheaply (`Leased._make(row)`)."""

    id: int
    body: bytes
    source: str
    received_at: float
    attempts: int
    rejections: int


@dataclass(frozen=True, slots=True)
class Release:
    """Give a leased event back: retry it no earlier than `delay` seconds from now."""

    id: int
    delay: float
    error: str
    rejected: bool = False  # the upstream refused this event (counts toward max_rejections)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Move a leased event to the dead-letter table."""

    id: int
    reason: str
    error: str


@dataclass(frozen=True, slots=True)
class SpoolStats:
    events: int
    bytes: int
    capacity_bytes: int
    oldest_received_at: float | None
    dead_letters: int
    dead_letter_bytes: int
    quarantined: list[str] = field(default_factory=list)
    refusing: str | None = None  # why writes are refused right now, or None
    corrupt: str | None = None  # where corruption was found while running, or None
    invalid_bytes: int = 0  # of dead_letter_bytes: invalid input kept at ingest
    invalid_capacity_bytes: int = 0  # its share of capacity_bytes
    invalid_not_kept: int = 0  # invalid items not stored since start: their share was full
    dedup_log_bytes: int = 0  # the duplicate-detection log, also counted against capacity


class Spool(Protocol):
    async def append(
        self, events: Sequence[Incoming], rejects: Sequence[Reject] = ()
    ) -> AppendResult:
        """Store events durably; return only after the commit holding them is fsynced.

        Raises SpoolRefused (and stores nothing of this call) when the events cannot be stored.
        Rejects that do not fit in invalid input's share are not stored and do not make the
        call fail: they are counted in the result's `not_kept`.
        """

    async def lease(self, limit: int) -> list[Leased]:
        """The oldest events ready for delivery that are not already leased."""

    async def ack(self, ids: Sequence[int]) -> None:
        """Delivered: delete these events."""

    async def release(self, items: Sequence[Release]) -> None:
        """Not delivered this time: give them back with a not-before time and the error."""

    async def dead_letter(self, items: Sequence[DeadLetter]) -> None:
        """Permanently refused: move them to the dead-letter table."""

    async def wait_for_events(self, timeout: float) -> None:
        """Return when new events were committed, or after `timeout` seconds."""

    def stats(self) -> SpoolStats:
        """Cheap, from memory: safe to call on every scrape."""

    def refusing(self) -> str | None:
        """Why the spool refuses writes right now (not-ready), or None."""

    def alive(self) -> bool:
        """False when the spool can no longer work at all (the relay should be restarted)."""

    async def close(self) -> None: ...
