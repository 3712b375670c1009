"""The SQLite spool's asyncio face: `relay.spool.api.Spool` over one writer thread (writer.py).

Each call becomes an operation on the writer's queue and waits for its future; the event loop
never touches the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from relay.spool.api import (
    AppendResult,
    DeadLetter,
    Incoming,
    Leased,
    Reject,
    Release,
    SpoolStats,
    SpoolUnavailable,
)
from relay.spool.sqlite.health import Health
from relay.spool.sqlite.open import list_quarantined, open_store
from relay.spool.sqlite.sql import Store
from relay.spool.sqlite.writer import Writer

_DUE_POLL = 0.25  # seconds: how soon a waiting lease finds an event whose retry came due


class SqliteSpool:
    """Implements `relay.spool.api.Spool` on one SQLite file in `directory`."""

    def __init__(
        self,
        directory: Path,
        store: Store,
        *,
        max_bytes: int,
        dedup_window: float,
        lock_fd: int,
        clock: Callable[[], float] = time.time,
        on_commit: Callable[[float], None] | None = None,
    ) -> None:
        self.directory = directory
        self._max_bytes = max_bytes
        self._lock_fd = lock_fd
        self._health = Health(directory, max_bytes)
        self._quarantined = list_quarantined(directory)
        self._new_events = asyncio.Event()  # set by the writer when events may be ready
        self._writer = Writer(
            store,
            self._health,
            max_bytes=max_bytes,
            dedup_window=dedup_window,
            loop=asyncio.get_running_loop(),
            new_events=self._new_events,
            clock=clock,
            on_commit=on_commit,
        )
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        max_bytes: int,
        dedup_window: float,
        max_page_count: int | None = None,
        on_commit: Callable[[float], None] | None = None,
    ) -> SqliteSpool:
        """Lock, open (migrating, or quarantining a corrupt file) and start the writer."""
        directory = Path(path)
        store, lock_fd = await asyncio.to_thread(open_store, directory, max_page_count)
        return cls(
            directory,
            store,
            max_bytes=max_bytes,
            dedup_window=dedup_window,
            lock_fd=lock_fd,
            on_commit=on_commit,
        )

    # -- the Spool interface -------------------------------------------------------------------

    async def append(
        self, events: Sequence[Incoming], rejects: Sequence[Reject] = ()
    ) -> AppendResult:
        if not events and not rejects:
            return AppendResult(0, 0, 0)
        return await self._submit("append", (events, rejects))

    async def lease(self, limit: int, wait: float = 0.0) -> list[Leased]:
        leased = await self._submit("lease", (limit,))
        if leased or wait <= 0:
            return leased
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancellation that
            # arrives as the event is set, and a lease loop that swallowed its cancel never
            # stopped. A release coming due sets nothing: it is found by leasing every
            # _DUE_POLL seconds.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(min(deadline, loop.time() + _DUE_POLL)):
                    await self._new_events.wait()
            self._new_events.clear()
            leased = await self._submit("lease", (limit,))
            if leased or loop.time() >= deadline:
                return leased

    async def ack(self, ids: Sequence[int]) -> None:
        if ids:
            await self._submit("ack", (ids,))

    async def release(self, items: Sequence[Release]) -> None:
        if items:
            await self._submit("release", (items,))

    async def dead_letter(self, items: Sequence[DeadLetter]) -> None:
        if items:
            await self._submit("dead_letter", (items,))

    def stats(self) -> SpoolStats:
        events, nbytes, dead, dead_bytes, invalid_bytes, log_bytes = self._writer.counters
        health = self._health
        return SpoolStats(
            events=events,
            bytes=nbytes,
            capacity_bytes=self._max_bytes,
            oldest_received_at=self._writer.oldest,
            dead_letters=dead,
            dead_letter_bytes=dead_bytes,
            set_aside=list(self._quarantined),
            refusing=self.refusing(),
            corrupt=health.corrupt,
            invalid_bytes=invalid_bytes,
            invalid_capacity_bytes=health.invalid_capacity,
            invalid_not_kept=health.not_kept,
            dedup_log_bytes=log_bytes,
        )

    def refusing(self) -> str | None:
        return self._health.refusing(self._writer.used())

    def alive(self) -> bool:
        return self._writer.alive()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer.stop()
        await asyncio.to_thread(self._writer.join)
        os.close(self._lock_fd)

    async def _submit(self, kind: str, args: tuple) -> Any:
        if self._closed:
            raise SpoolUnavailable("the spool is closed")
        return await self._writer.submit(kind, args)
