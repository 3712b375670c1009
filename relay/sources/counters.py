"""What the sources count, as plain numbers: `relay.ops.collectors` reads them at scrape time.

Only the event loop changes or reads them (sources run there, and so does `/metrics`), so they
need no lock; a plain dict increment is also what keeps counting off the profile of the hot path.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["DECLARED_REASONS", "ListenerCounts", "SourceCounters"]

# Refusal reasons every source shows from the start (at zero), so dashboards see them exist.
DECLARED_REASONS = ("invalid", "not_kept", "spool_full", "spool_unavailable")


@dataclass
class SourceCounters:
    """Totals since start: by source, or by (source, reason)."""

    received: Counter[str] = field(default_factory=Counter)
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)
    duplicates: Counter[str] = field(default_factory=Counter)
    # lines that are not status events (another logger), skipped on purpose
    skipped: Counter[tuple[str, str]] = field(default_factory=Counter)
    # input kept as dead letters at ingest, by reason
    dead_lettered: Counter[str] = field(default_factory=Counter)

    def declare(self, source: str) -> None:
        """Show this source's counters at zero from the start."""
        self.received[source] += 0
        self.duplicates[source] += 0
        for reason in DECLARED_REASONS:
            self.rejected[source, reason] += 0


class ListenerCounts(Protocol):
    """What a TCP listener counts (see `relay.sources.tcp.TcpIngest`)."""

    @property
    def connections(self) -> int: ...  # open now

    @property
    def refused_connections(self) -> int: ...  # closed at once over max_connections

    @property
    def broken_connections(self) -> int: ...  # closed because framing was lost
