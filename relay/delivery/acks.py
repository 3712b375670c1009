"""Acknowledging delivered events to the spool: batched commits, not one per request."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from relay import supervision
from relay.spool import Spool, SpoolRefused

log = logging.getLogger("relay.delivery")

_EVERY = 0.05  # seconds between ack commits
_BATCH = 2000  # an ack commit as soon as this many are waiting
_BACKLOG = 4 * _BATCH  # delivered but not yet acked: above this, stop taking events


class Acks:
    """Owns the ids of the events delivered but not yet acknowledged in the spool. When an ack
    cannot be written (a full disk), the ids are kept: the spool keeps their leases, so they are
    acknowledged later, not sent again."""

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self._ids: list[int] = []
        self._due = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._failing = False

    def add(self, ids: list[int]) -> None:
        self._ids += ids
        if len(self._ids) >= _BATCH:
            self._due.set()

    @property
    def backlogged(self) -> bool:
        """So many acks wait (the spool refuses them) that delivery should take no more."""
        return len(self._ids) > _BACKLOG

    def pending(self) -> set[int]:
        return set(self._ids)

    def start(self) -> None:
        self._task = supervision.watch(asyncio.create_task(self._run(), name="delivery-acks"))

    async def stop(self) -> None:
        """Stop the ack loop and write the last acks."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self._flush()
        except SpoolRefused as exc:
            log.error("last acks not recorded (%s): those events will be sent again", exc)

    async def _run(self) -> None:
        while True:
            # asyncio.timeout: 3.11's wait_for can swallow the cancel that stops this loop
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_EVERY):
                    await self._due.wait()
            self._due.clear()
            try:
                await self._flush()
            except SpoolRefused as exc:
                if not self._failing:
                    log.error("cannot acknowledge delivered events in the spool: %s", exc)
                    self._failing = True
                await asyncio.sleep(1.0)
                continue
            if self._failing:
                log.info("delivered events are acknowledged in the spool again")
                self._failing = False

    async def _flush(self) -> None:
        if self._ids:
            ids, self._ids = self._ids, []
            try:
                await self._spool.ack(ids)
            except SpoolRefused:
                self._ids = ids + self._ids
                raise
