"""`relay.spool.api.SpoolAdmin` over a MemorySpool of the same process (for the contract tests:
a memory spool has no outside for `relay spool` and `relay dlq` to reach). Part of the memory
backend, so it reads and changes the spool's state directly."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from relay.spool.api import DeadLetterRecord, SalvageReport, SpoolStats, SpoolUnreadable
from relay.spool.memory import MemorySpool


class MemoryAdmin:
    """`relay.spool.api.SpoolAdmin` over a MemorySpool of the same process."""

    def __init__(self, spool: MemorySpool) -> None:
        self._spool = spool

    async def stats(self) -> SpoolStats:
        return self._spool.stats()

    async def per_source(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for row in self._spool._events.values():
            numbers = out.setdefault(row.source, {"events": 0, "bytes": 0, "dead_letters": 0})
            numbers["events"] += 1
            numbers["bytes"] += len(row.body)
        for record in self._spool._dead.values():
            numbers = out.setdefault(record.source, {"events": 0, "bytes": 0, "dead_letters": 0})
            numbers["dead_letters"] += 1
        return out

    async def check(self) -> list[str]:
        spool = self._spool
        counted = sum(len(row.body) for row in spool._events.values())
        if counted != spool._bytes:
            return [f"counter of event bytes says {spool._bytes}, the events hold {counted}"]
        return []

    async def list_dead_letters(self, limit: int = 1000) -> list[DeadLetterRecord]:
        return list(self._spool._dead.values())[:limit]

    async def replay_dead_letters(
        self, ids: Sequence[int] | None, prepare: Callable[[bytes], bytes]
    ) -> tuple[list[int], dict[int, str]]:
        spool = self._spool
        wanted = sorted(set(ids)) if ids is not None else list(spool._dead)
        replayed: list[int] = []
        skipped: dict[int, str] = {}
        for dl_id in wanted:
            record = spool._dead.get(dl_id)
            if record is None:
                skipped[dl_id] = "no such dead letter"
                continue
            try:
                body = prepare(record.body)
            except ValueError as exc:
                skipped[dl_id] = str(exc)
                continue
            spool._remove_dead(dl_id)
            spool._requeue(body, record.source)
            replayed.append(dl_id)
        return replayed, skipped

    async def purge_dead_letters(self, older_than: float) -> int:
        spool = self._spool
        cutoff = spool._clock() - older_than
        old = [r.id for r in spool._dead.values() if r.dead_at < cutoff]
        for dl_id in old:
            spool._remove_dead(dl_id)
        return len(old)

    async def salvage(self, place: str) -> SalvageReport:
        raise SpoolUnreadable("the memory spool sets nothing aside: there is nothing to salvage")
