"""The last hour of the relay's main numbers, for the console's charts (`GET /`).

An operator without Prometheus still wants to see whether the queue grows and whether events
flow: every `every` seconds one `Sample` of the spool's gauges and of the delivery and ingest
totals goes into a bounded ring (360 samples of 10 s: one hour). Rates are derived from the
totals' differences between neighbouring samples, so nothing counts twice and a missed tick
only widens one interval. Everything lives in memory and starts empty with the process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from relay.delivery.setup import DeliveryParts
from relay.sources.counters import SourceCounters
from relay.spool import Spool

__all__ = ["Sample", "Sampler"]

log = logging.getLogger("relay.ops.samples")

DEFAULT_EVERY = 10.0
DEFAULT_KEEP = 360


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # wall time
    depth: int  # events waiting in the spool
    bytes: int
    oldest_age: float | None  # seconds, None with an empty spool
    dead_letters: int
    delivered: int  # totals since start
    ingested: int
    refused: int


class Sampler:
    """A ring of the last `keep` samples, one every `every` seconds once `run` is started."""

    def __init__(
        self,
        spool: Spool,
        counters: SourceCounters,
        delivery: DeliveryParts | None = None,
        *,
        every: float = DEFAULT_EVERY,
        keep: int = DEFAULT_KEEP,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.every = every
        self._spool = spool
        self._counters = counters
        self._delivery = delivery
        self._clock = clock
        self.samples: deque[Sample] = deque(maxlen=keep)
        # when the upstream was first seen connected since it was last seen down (wall time)
        self.connected_since: float | None = None

    def sample(self) -> Sample:
        """Take one sample now and keep it (the oldest falls out of a full ring)."""
        now = self._clock()
        stats = self._spool.stats()
        counters = self._counters
        delivered = self._delivery.delivery.stats.delivered if self._delivery else 0
        taken = Sample(
            at=now,
            depth=stats.events,
            bytes=stats.bytes,
            oldest_age=max(0.0, now - stats.oldest_received_at)
            if stats.oldest_received_at
            else None,
            dead_letters=stats.dead_letters,
            delivered=delivered,
            ingested=sum(counters.received.values()),
            refused=sum(counters.rejected.values()),
        )
        self.samples.append(taken)
        self.observe_upstream()
        return taken

    def observe_upstream(self) -> None:
        """Note when the upstream came up; the sink knows only since when it is down."""
        if self._delivery is None:
            return
        if self._delivery.sink.connected:
            if self.connected_since is None:
                self.connected_since = self._clock()
        else:
            self.connected_since = None

    def rates(self, field: str) -> list[tuple[float, float]]:
        """(time, events per minute) of the total `field` ("delivered", "ingested", "refused")
        over each interval between neighbouring samples, stamped with the interval's end."""
        out = []
        previous: Sample | None = None
        for s in self.samples:
            if previous is not None and s.at > previous.at:
                # a total never goes down while the process lives; be safe if one is replaced
                delta = max(0, getattr(s, field) - getattr(previous, field))
                out.append((s.at, 60.0 * delta / (s.at - previous.at)))
            previous = s
        return out

    def series(self, field: str) -> list[tuple[float, float]]:
        """(time, value) of a gauge ("depth", "bytes", "oldest_age", "dead_letters")."""
        return [(s.at, float(getattr(s, field) or 0.0)) for s in self.samples]

    async def run(self) -> None:
        """Sample until cancelled (a supervised task of `relay.server`). One sample is taken at
        once, so the page has numbers from the start."""
        while True:
            try:
                self.sample()
            except Exception as exc:  # noqa: BLE001 - a chart gap is better than a dead relay
                log.warning("console sample failed: %s", exc)
            await asyncio.sleep(self.every)
