"""What every source does with what it reads: validate, keep the invalid, store, count.

Sources differ in how events arrive (HTTP bodies, syslog frames, JSON lines); from the first
decoded JSON value onwards they are treated alike here.
"""

from __future__ import annotations

from collections import Counter

from relay import event
from relay.ops.metrics import Metrics
from relay.spool import AppendResult, Incoming, Reject, Spool, SpoolFull, SpoolRefused


class Intake:
    def __init__(self, spool: Spool, max_event_bytes: int, metrics: Metrics | None = None) -> None:
        self.spool = spool
        self.max_event_bytes = max_event_bytes
        self.metrics = metrics or Metrics()
        self.dead_lettered: Counter[str] = Counter()  # input kept as dead letters, by reason
        self._received_by_source: dict = {}

    def _received(self, source: str):
        # labels() costs a lookup under a lock: once per source, not once per request
        child = self._received_by_source.get(source)
        if child is None:
            child = self._received_by_source[source] = self.metrics.received.labels(source)
        return child

    def declare(self, source: str) -> None:
        """Show this source's counters at zero from the start, so dashboards see it exists."""
        m = self.metrics
        m.received.labels(source)
        m.duplicates.labels(source)
        for reason in ("invalid", "not_kept", "spool_full", "spool_unavailable"):
            m.rejected.labels(source, reason)

    def check(self, value: object) -> bytes:
        """The canonical bytes of a valid event; raises EventError with a one-line reason."""
        encoded = event.encode(event.normalise(value))
        if len(encoded) > self.max_event_bytes:
            raise event.EventError(
                f"event is {len(encoded)} bytes, over the limit of {self.max_event_bytes} "
                "(ingest.http.max_event_bytes)"
            )
        return encoded

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
        m = self.metrics
        received = len(events) + len(rejects)
        if not retry:
            self._received(source).inc(received)
        try:
            result = await self.spool.append(events, rejects)
        except SpoolRefused as exc:
            if not retry:
                reason = "spool_full" if isinstance(exc, SpoolFull) else "spool_unavailable"
                m.rejected.labels(source, reason).inc(received)
            raise
        # the last `not_kept` rejects were not stored: invalid input has filled its share
        kept = len(rejects) - result.not_kept
        for r in rejects[:kept]:
            m.rejected.labels(source, r.reason).inc()
            self.dead_lettered[r.reason] += 1
        if result.not_kept:
            m.rejected.labels(source, "not_kept").inc(result.not_kept)
        if result.duplicates:
            m.duplicates.labels(source).inc(result.duplicates)
        return result
