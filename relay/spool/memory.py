"""A spool held in the relay's memory: `spool.backend = "memory"`.

For unit tests of sources and delivery: the same contract as the SQLite spool (it passes
`tests/spool/test_contract.py`) without files or threads, with an injectable clock. Nothing
survives the process, so it is no choice for a relay that must not lose events.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from relay.spool.api import (
    INVALID_SHARE,
    AppendResult,
    DeadLetter,
    DeadLetterRecord,
    Incoming,
    Leased,
    Reject,
    Release,
    SpoolFull,
    SpoolStats,
    SpoolUnavailable,
    bounded_delay,
    dead_letter_size,
    fill_refusal,
    keep_rejects,
)
from relay.spool.dedup import digest


def _record_size(r: DeadLetterRecord) -> int:
    return dead_letter_size(r.body, r.source, r.reason, r.first_error or "", r.last_error or "")


@dataclass(slots=True)
class _Row:
    id: int
    body: bytes
    source: str
    received_at: float
    attempts: int = 0
    rejections: int = 0
    not_before: float = 0.0  # 0: never handed back; otherwise due for a retry from then
    first_error: str | None = None
    last_error: str | None = None
    first_attempt_at: float | None = None

    def leased(self) -> Leased:
        return Leased(
            self.id, self.body, self.source, self.received_at, self.attempts, self.rejections
        )


class MemorySpool:
    """Implements `relay.spool.api.Spool` in memory (memory_admin.py: its `SpoolAdmin`)."""

    def __init__(
        self,
        *,
        max_bytes: int = 1 << 30,
        dedup_window: float = 0.0,
        clock: Callable[[], float] = time.time,
        on_commit: Callable[[float], None] | None = None,
    ) -> None:
        self._max_bytes = max_bytes
        self._window = dedup_window
        self._clock = clock
        self._on_commit = on_commit
        self._events: dict[int, _Row] = {}  # in id order: ids only grow
        self._next_id = 1
        self._bytes = 0
        self._leased: set[int] = set()
        self._dead: dict[int, DeadLetterRecord] = {}
        self._next_dead_id = 1
        self._dead_bytes = 0
        self._invalid_bytes = 0
        self._invalid_capacity = int(max_bytes * INVALID_SHARE)
        self._not_kept = 0
        self._full: str | None = None  # the last refusal for want of room, until room is made
        self._digests: dict[int, float] = {}  # digest -> when stored, oldest first
        self._wake = asyncio.Event()
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: object = None,
        *,
        max_bytes: int,
        dedup_window: float,
        on_commit: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> MemorySpool:
        """The registry's way in; `path` is ignored (nothing is kept anywhere)."""
        return cls(max_bytes=max_bytes, dedup_window=dedup_window, clock=clock, on_commit=on_commit)

    # -- the Spool interface -------------------------------------------------------------------

    async def append(
        self, events: Sequence[Incoming], rejects: Sequence[Reject] = ()
    ) -> AppendResult:
        if not events and not rejects:
            return AppendResult(0, 0, 0)
        self._check_open()
        now = self._clock()
        fresh: list[tuple[Incoming, int | None]] = []
        duplicates = 0
        if self._window > 0:
            self._expire(now)
            seen: set[int] = set()
            for ev in events:
                d = digest(ev.body)
                if d in self._digests or d in seen:
                    duplicates += 1
                else:
                    seen.add(d)
                    fresh.append((ev, d))
        else:
            fresh = [(ev, None) for ev in events]
        event_bytes = sum(len(ev.body) for ev, _ in fresh)
        room = self._max_bytes - self._used()
        if event_bytes and event_bytes > room:
            self._full = f"storing {event_bytes} bytes would exceed spool.max_bytes"
            raise SpoolFull(self._full)
        left = min(room - event_bytes, self._invalid_capacity - self._invalid_bytes)
        kept, kept_bytes, not_kept = keep_rejects(rejects, left)
        for ev, d in fresh:
            self._events[self._next_id] = _Row(self._next_id, ev.body, ev.source, now)
            self._next_id += 1
            self._bytes += len(ev.body)
            if d is not None:
                self._digests[d] = now
        for raw, r in kept:
            self._add_dead(None, raw, r.source, r.reason, 0, r.error, r.error, now, None, now)
        self._invalid_bytes += kept_bytes
        self._not_kept += not_kept
        if fresh or kept:
            self._full = None
        if fresh:
            self._wake.set()
        if self._on_commit is not None:
            self._on_commit(0.0)
        return AppendResult(len(fresh), duplicates, len(kept), not_kept)

    async def lease(self, limit: int, wait: float = 0.0) -> list[Leased]:
        self._check_open()
        items = self._take(limit)
        if items or wait <= 0:
            return items
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while (remaining := deadline - loop.time()) > 0:
            self._wake.clear()
            # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancellation that
            # arrives as the event is set
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, self._next_due())):
                    await self._wake.wait()
            items = self._take(limit)
            if items:
                return items
        return []

    async def ack(self, ids: Sequence[int]) -> None:
        for _, row in self._given_back(ids, remove=True):
            self._bytes -= len(row.body)
            self._full = None

    async def release(self, items: Sequence[Release]) -> None:
        now = self._clock()
        for n, row in self._given_back([i.id for i in items]):
            item = items[n]
            row.attempts += 1
            row.rejections += int(item.rejected)
            row.not_before = now + bounded_delay(item.delay)
            row.first_error = row.first_error if row.first_error is not None else item.error
            row.last_error = item.error
            if row.first_attempt_at is None:
                row.first_attempt_at = now
        self._wake.set()

    async def dead_letter(self, items: Sequence[DeadLetter]) -> None:
        now = self._clock()
        for n, row in self._given_back([i.id for i in items], remove=True):
            item = items[n]
            self._bytes -= len(row.body)
            first = row.first_error if row.first_error is not None else item.error
            started = row.first_attempt_at if row.first_attempt_at is not None else now
            self._add_dead(
                row.id,
                row.body,
                row.source,
                item.reason,
                row.attempts + 1,
                first,
                item.error,
                row.received_at,
                started,
                now,
            )

    def stats(self) -> SpoolStats:
        oldest = next(iter(self._events.values()), None)
        return SpoolStats(
            events=len(self._events),
            bytes=self._bytes,
            capacity_bytes=self._max_bytes,
            oldest_received_at=oldest.received_at if oldest else None,
            dead_letters=len(self._dead),
            dead_letter_bytes=self._dead_bytes,
            refusing=self.refusing(),
            invalid_bytes=self._invalid_bytes,
            invalid_capacity_bytes=self._invalid_capacity,
            invalid_not_kept=self._not_kept,
        )

    def refusing(self) -> str | None:
        used = self._used()
        return fill_refusal(used, self._max_bytes, bool(self._full))

    def alive(self) -> bool:
        return not self._closed

    async def close(self) -> None:
        self._closed = True

    # -- plumbing --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolUnavailable("the spool is closed")

    def _given_back(self, ids: Sequence[int], remove: bool = False) -> Iterator[tuple[int, _Row]]:
        """(position in `ids`, row) of the events delivery hands back, no longer leased; ids
        no longer in the spool are skipped."""
        self._check_open()
        for n, i in enumerate(ids):
            self._leased.discard(i)
            row = self._events.pop(i, None) if remove else self._events.get(i)
            if row is not None:
                yield n, row

    def _used(self) -> int:
        return self._bytes + self._dead_bytes

    def _expire(self, now: float) -> None:
        cutoff = now - self._window
        while self._digests:
            d, seen_at = next(iter(self._digests.items()))
            if seen_at >= cutoff:
                return
            del self._digests[d]

    def _take(self, limit: int) -> list[Leased]:
        now = self._clock()
        leased = self._leased
        due = sorted(
            (row for row in self._events.values() if 0 < row.not_before <= now),
            key=lambda row: row.not_before,
        )
        out = [row for row in due if row.id not in leased][:limit]
        if len(out) < limit:
            for row in self._events.values():
                if row.not_before == 0 and row.id not in leased:
                    out.append(row)
                    if len(out) == limit:
                        break
        leased.update(row.id for row in out)
        return [row.leased() for row in out]

    def _next_due(self) -> float:
        """Seconds until the next released event is due (by the spool's clock), or a long time."""
        now = self._clock()
        waits = [
            row.not_before - now
            for row in self._events.values()
            if row.not_before > 0 and row.id not in self._leased
        ]
        return max(min(waits), 0.0) if waits else 3600.0

    def _add_dead(
        self,
        event_id: int | None,
        body: bytes,
        source: str,
        reason: str,
        attempts: int,
        first: str | None,
        last: str | None,
        received_at: float,
        first_attempt_at: float | None,
        dead_at: float,
    ) -> None:
        record = DeadLetterRecord(
            self._next_dead_id,
            event_id,
            reason,
            source,
            attempts,
            first,
            last,
            received_at,
            first_attempt_at,
            dead_at,
            body,
        )
        self._dead[record.id] = record
        self._next_dead_id += 1
        self._dead_bytes += _record_size(record)

    def _remove_dead(self, dl_id: int) -> DeadLetterRecord | None:
        record = self._dead.pop(dl_id, None)
        if record is not None:
            size = _record_size(record)
            self._dead_bytes -= size
            if record.event_id is None:
                self._invalid_bytes -= size
            self._full = None
        return record

    def _requeue(self, body: bytes, source: str) -> None:
        self._events[self._next_id] = _Row(self._next_id, body, source, self._clock())
        self._next_id += 1
        self._bytes += len(body)
        self._wake.set()
