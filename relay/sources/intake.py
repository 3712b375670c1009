"""What every source does with what it reads: validate, keep the invalid, store, count.

Sources differ in how events arrive (HTTP bodies, syslog frames, JSON lines); from the first
decoded JSON value onwards they are treated alike here.
"""

from __future__ import annotations

from relay import event
from relay.sources.counters import SourceCounters
from relay.spool import AppendResult, Incoming, Reject, Spool, SpoolFull, SpoolRefused

# The setting that bounds one event, named in the error of an event over it.
MAX_EVENT_SETTING = "ingest.max_event_bytes"


class Intake:
    def __init__(self, spool: Spool, max_event_bytes: int) -> None:
        self.spool = spool
        self.max_event_bytes = max_event_bytes
        self.counters = SourceCounters()

    def declare(self, source: str) -> None:
        """Show this source's counters at zero from the start, so dashboards see it exists."""
        self.counters.declare(source)

    def check(self, value: object) -> bytes:
        """The canonical bytes of a valid event; raises EventError with a one-line reason."""
        encoded = event.encode(event.normalise(value))
        if len(encoded) > self.max_event_bytes:
            raise event.EventError(
                f"event is {len(encoded)} bytes, over the limit of {self.max_event_bytes} "
                f"({MAX_EVENT_SETTING})"
            )
        return encoded

    def item(self, value: object, raw: bytes | str, source: str) -> Incoming | Reject:
        """`value` (decoded from `raw`) as an event to store, or as a dead letter of `raw`."""
        try:
            return Incoming(self.check(value), source)
        except event.EventError as exc:
            return self.reject(raw, str(exc), source)

    def reject(self, raw: bytes | str, error: str, source: str, reason: str = "invalid") -> Reject:
        """Input that is not a valid event, made safe to store: personal numbers hashed."""
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        return Reject(
            raw=event.scrub_personal_numbers(text),
            error=event.scrub_personal_numbers(error),
            source=source,
            reason=reason,
        )

    async def submit(
        self,
        source: str,
        events: list[Incoming],
        rejects: list[Reject] = (),
        *,
        retry: bool = False,
    ) -> AppendResult:
        """Store durably and count; raises SpoolRefused (nothing stored) when the spool refuses.

        `retry`: these were submitted before and refused, and are held by the source (TCP
        back-pressure); they were counted as received and refused then, not again."""
        c = self.counters
        received = len(events) + len(rejects)
        if not retry:
            c.received[source] += received
        try:
            result = await self.spool.append(events, rejects)
        except SpoolRefused as exc:
            if not retry:
                reason = "spool_full" if isinstance(exc, SpoolFull) else "spool_unavailable"
                c.rejected[source, reason] += received
            raise
        # the last `not_kept` rejects were not stored: invalid input has filled its share
        kept = len(rejects) - result.not_kept
        for r in rejects[:kept]:
            c.rejected[source, r.reason] += 1
            c.dead_lettered[r.reason] += 1
        if result.not_kept:
            c.rejected[source, "not_kept"] += result.not_kept
        if result.duplicates:
            c.duplicates[source] += result.duplicates
        return result
