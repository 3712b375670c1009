"""The upkeep of the `dedup_log` table: read back into memory at start-up, cut at the front once
its digests are past the window. Rows are written by the commit that stores their events
(`Store.flush`); this owns how far the log may be cut. Used only from the writer thread.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable

from relay.spool.dedup import RecentDigests
from relay.spool.sqlite.health import Health, describe
from relay.spool.sqlite.sql import CorruptRow, Store

log = logging.getLogger("relay.spool")

_PURGE_CHUNK = 50_000  # rows per transaction: a range at the front of the table
_PURGE_ROUNDS = 40


class DedupLog:
    def __init__(self, store: Store, health: Health) -> None:
        self._store = store
        self._health = health
        self._purge_upto = 0  # rows up to this rowid are no longer needed

    def load(self, dedup: RecentDigests | None, now: float) -> None:
        """Remember the digests logged within the window (all of them before the first append is
        served, so that no digest committed before a restart is missed)."""
        store = self._store
        try:
            self._purge_upto = store.last_dedup_rowid()
            if dedup is None:
                return
            first = True
            dedup.known.begin_load()
            try:
                for rowid, seen_at, digests in store.read_dedup_log(now - dedup.window):
                    if first:
                        self._purge_upto = rowid - 1
                        first = False
                    dedup.add(digests, seen_at, rowid)
            finally:
                dedup.known.end_load()
        except CorruptRow as exc:
            self._health.found_corrupt("the dedup log", str(exc))
        except sqlite3.Error as exc:
            self._health.check_corrupt(exc, "the dedup log")
            # without them a producer's retry may be stored twice, but nothing is lost
            log.error("cannot read the spool's dedup log: %s", describe(exc))

    def purge(self, dedup: RecentDigests | None, now: float, busy: Callable[[], bool]) -> None:
        """Delete the rows whose digests were forgotten, in short transactions, stopping early
        when `busy()` (producers waiting on a commit are not held up)."""
        if dedup is not None:
            dedup.expire(now)
            self._purge_upto = max(self._purge_upto, dedup.forgotten_rowid)
        store = self._store
        for _ in range(_PURGE_ROUNDS):
            try:
                store.begin()
                deleted = store.purge_dedup_log(self._purge_upto, _PURGE_CHUNK)
                store.commit()
            except sqlite3.Error as exc:
                self._health.check_corrupt(exc, "housekeeping")
                store.rollback()
                log.warning("spool housekeeping failed: %s", describe(exc))
                return
            if deleted < _PURGE_CHUNK or busy():
                return
