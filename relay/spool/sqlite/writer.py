"""The SQLite spool's writer thread: the one place that writes the file.

Every write that arrives while a commit is in progress goes into the next commit (group commit);
each caller is released only when the commit holding its events has returned from fsync (WAL,
synchronous=FULL). The thread owns the transaction, the lease cursor, the leased set, the dedup
digests being staged, and the counters; the event loop never touches the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from relay import supervision
from relay.spool.api import SpoolFull, SpoolUnavailable, append_result
from relay.spool.dedup import RecentDigests
from relay.spool.sqlite.dedup_log import DedupLog
from relay.spool.sqlite.health import Health, describe
from relay.spool.sqlite.sql import Store

log = logging.getLogger("relay.spool")

_PROBE_EVERY = 2.0  # seconds between write probes while refusing
_HOUSEKEEP_EVERY = 10.0
_IDLE_TICK = 1.0


class _Op:
    __slots__ = ("kind", "args", "future", "result", "error", "added")

    def __init__(self, kind: str, args: tuple, future: asyncio.Future | None) -> None:
        self.kind = kind
        self.args = args
        self.future = future
        self.result: Any = None
        self.error: BaseException | None = None
        self.added: tuple[int, int, int, int] = (0, 0, 0, 0)  # what an append stored


_WRITES = frozenset({"append", "ack", "release", "dead_letter"})


class Writer:
    """Serves the spool's operations on its own thread, in batches (see the module's doc)."""

    def __init__(
        self,
        store: Store,
        health: Health,
        *,
        max_bytes: int,
        dedup_window: float,
        loop: asyncio.AbstractEventLoop,
        new_events: asyncio.Event,
        clock: Callable[[], float] = time.time,
        on_commit: Callable[[float], None] | None = None,
    ) -> None:
        self._store = store
        self._health = health
        self._max_bytes = max_bytes
        self._dedup = RecentDigests(dedup_window) if dedup_window > 0 else None
        self._log = DedupLog(store, health)
        self._loop = loop
        self._new_events = new_events  # set on the loop when events may be ready to lease
        self._clock = clock
        self._on_commit = on_commit  # called from this thread with each commit's seconds
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._leased: set[int] = set()
        self._cursor = 0
        self._checked_upto = 0  # the furthest the cursor ever went: ids handed out lie below
        # (events, event bytes, dead letters, dead-letter bytes, invalid bytes, dedup-log bytes):
        # replaced whole, so the event loop reads a consistent tuple
        self.counters: tuple[int, int, int, int, int, int] = store.counters()
        self.oldest: float | None = store.oldest_received_at()
        self._thread = threading.Thread(target=self._run, name="relay-spool", daemon=True)
        self._thread.start()

    def used(self) -> int:
        _, nbytes, _, dead_bytes, _, log_bytes = self.counters
        return nbytes + dead_bytes + log_bytes

    def submit(self, kind: str, args: tuple) -> asyncio.Future:
        """Queue an operation; its future is resolved on the loop. Call from the loop."""
        if not self._thread.is_alive():
            raise SpoolUnavailable("the spool's writer has stopped; restart the relay")
        future = self._loop.create_future()
        self._queue.put(_Op(kind, args, future))
        return future

    def stop(self) -> None:
        """Finish what is queued, close the file, and end the thread (see `join`)."""
        self._queue.put(None)

    def join(self) -> None:
        self._thread.join()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:
            # the callers waiting now would wait forever, and later ones get SpoolUnavailable:
            # the relay must be restarted, so say so through its supervisor
            log.critical("the spool's writer thread died", exc_info=True)
            supervision.report_failure("spool writer", exc)
            self._fail_waiting(exc)
            raise

    def _fail_waiting(self, exc: BaseException) -> None:
        # nobody will serve what is queued: answer it, so that no caller waits forever
        waiting = []
        while True:
            try:
                op = self._queue.get_nowait()
            except queue.Empty:
                break
            if op is not None and op.future is not None:
                op.error = SpoolUnavailable(f"the spool's writer has stopped: {type(exc).__name__}")
                waiting.append(op)
        if waiting:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._resolve, waiting)

    def _serve(self) -> None:
        # before the first append is served, so that no digest committed before a restart is
        # missed; the event loop (and /readyz) does not wait for it
        self._load_dedup()
        last_housekeeping = time.monotonic()
        while True:
            timeout = _PROBE_EVERY if self._health.failing else _IDLE_TICK
            try:
                first = self._queue.get(timeout=timeout)
            except queue.Empty:
                first = _Op("idle", (), None)
            ops = [first]
            while True:
                try:
                    ops.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stopping = any(op is None for op in ops)
            ops = [op for op in ops if op is not None]
            try:
                self._cycle(ops)
                if time.monotonic() - last_housekeeping > _HOUSEKEEP_EVERY:
                    last_housekeeping = time.monotonic()
                    self._housekeep()
            except BaseException as exc:  # noqa: BLE001 - the thread must outlive any one batch
                log.exception("spool writer failed on a batch; its callers get an error")
                for op in ops:
                    if op.error is None:
                        op.error = SpoolUnavailable(f"internal error: {type(exc).__name__}")
                self._rewind()
                self._leased.clear()
            done = [op for op in ops if op.future is not None]
            if done:
                try:
                    self._loop.call_soon_threadsafe(self._resolve, done)
                except RuntimeError:
                    return  # the event loop is gone: nobody is waiting any more
            if stopping:
                with contextlib.suppress(Exception):
                    self._store.close()
                return

    def _cycle(self, ops: list[_Op]) -> None:
        writes = [op for op in ops if op.kind in _WRITES]
        leases = [op for op in ops if op.kind == "lease"]
        if writes and leases:
            # Served before the commit and answered at once, so that delivery does not wait for
            # an fsync to get work. Events acked or released in this commit are still leased,
            # so none of them is handed out; events appended in it come with the next lease.
            for op in leases:
                self._lease(op)
            with contextlib.suppress(RuntimeError):  # the event loop is gone
                self._loop.call_soon_threadsafe(self._resolve, leases)
            self._commit(writes)
            return
        if writes:
            self._commit(writes)
        elif ops and ops[0].kind == "idle":
            if self._health.failing:
                if self._health.probe(self._store):
                    self._refresh_counters()
            else:
                # another process (`relay dlq`) may have changed the spool meanwhile, and
                # disk space may have come back
                self._health.disk_short()
                before = self.counters[0]
                self._refresh_counters()
                if self.counters[0] > before:
                    self._loop.call_soon_threadsafe(self._new_events.set)
        for op in ops:
            if op.kind == "lease":
                self._lease(op)

    def _resolve(self, ops: list[_Op]) -> None:
        for op in ops:
            if op.future.done():
                continue
            if op.error is not None:
                op.future.set_exception(op.error)
            else:
                op.future.set_result(op.result)
        if any(op.kind in ("append", "release") and op.error is None for op in ops):
            self._new_events.set()

    def _commit(self, writes: list[_Op]) -> None:
        started = time.monotonic()
        now = self._clock()
        dedup = self._dedup
        if dedup is not None:
            dedup.expire(now)
            dedup.discard_staged()
        _, nbytes, _, dead_bytes, invalid_used, log_bytes = self.counters
        health = self._health
        used = nbytes + dead_bytes + log_bytes
        store = self._store
        short = health.disk_short()
        if health.corrupt:
            # nothing new goes into a damaged file; acks and releases still may, so that what
            # can be read is delivered and not sent twice
            for op in writes:
                if op.kind == "append":
                    op.error = SpoolUnavailable(f"the spool file is corrupt: {health.corrupt}")
            writes = [op for op in writes if op.kind != "append"]
            if not writes:
                return
        if short:
            for op in writes:
                if op.kind == "append":
                    op.error = SpoolFull(short)
            health.refused("disk", short)
            writes = [op for op in writes if op.kind != "append"]
            if not writes:
                return
        store.discard_pending()
        try:
            store.begin()
            for op in writes:
                if op.kind == "append":
                    try:
                        accepted, dups, dl, added, dead_added, not_kept = store.append(
                            *op.args,
                            now,
                            dedup,
                            self._max_bytes - used,
                            health.invalid_capacity - invalid_used,
                        )
                    except SpoolFull as exc:
                        op.error = exc
                        health.refused("full", str(exc))
                        continue
                    used += added + dead_added
                    invalid_used += dead_added
                    op.result = append_result(accepted, dups, dl, not_kept)
                    op.added = (accepted, added, dl, dead_added)
                    if not_kept:
                        health.invalid_full(not_kept, self.counters[4])
                elif op.kind == "ack":
                    store.delete(op.args[0])
                elif op.kind == "release":
                    store.release(op.args[0], now)
                elif op.kind == "dead_letter":
                    store.dead_letter(op.args[0], now)
            log_added = store.flush(now, dedup)
            store.commit()
            if dedup is not None:
                dedup.commit_staged(now)
        except sqlite3.Error as exc:
            health.check_corrupt(exc, "a write")
            store.rollback()
            store.discard_pending()
            if dedup is not None:
                dedup.discard_staged()
            others = [op for op in writes if op.kind != "append"]
            if others and len(others) < len(writes):
                # acks and releases must not fail with appends that did not fit: alone they
                # free space, and a failed ack means sending those events twice
                for op in writes:
                    if op.kind == "append" and op.error is None:
                        op.error = SpoolUnavailable(describe(exc))
                self._commit(others)
                health.write_failed(exc)
                return
            self._write_failed(exc, writes)
            return
        self._after_commit(writes, log_added)
        elapsed = time.monotonic() - started
        if self._on_commit is not None:
            self._on_commit(elapsed)
        if elapsed > 1.0:
            log.warning("spool commit took %.1f s (%d operations)", elapsed, len(writes))

    def _after_commit(self, writes: list[_Op], log_added: int = 0) -> None:
        # only stored events prove that new ones can be stored (acks need no new space)
        stored = refused = freed = kept_invalid = False
        for op in writes:
            if op.kind == "append":
                if op.error is None:
                    stored = True
                    kept_invalid = kept_invalid or bool(op.added[2])
                else:
                    refused = True
            elif op.kind == "ack":
                freed = True
        self._health.committed(stored, refused, freed, kept_invalid)
        for op in writes:
            if op.kind == "ack":
                self._leased.difference_update(op.args[0])
            elif op.kind in ("release", "dead_letter"):
                self._leased.difference_update(item.id for item in op.args[0])
        if all(op.kind == "append" for op in writes):
            # the hot path: what was added is known, so no need to read the counters back
            events, nbytes, dead, dead_bytes, invalid_bytes, log_bytes = self.counters
            for op in writes:
                n, b, d, db = op.added
                events, nbytes, dead, dead_bytes = events + n, nbytes + b, dead + d, dead_bytes + db
                invalid_bytes += db  # an append's dead letters are all invalid input
            log_bytes += log_added
            self.counters = (events, nbytes, dead, dead_bytes, invalid_bytes, log_bytes)
            if self.oldest is None and events:
                self.oldest = self._clock()
        else:
            self._refresh_counters()

    def _refresh_counters(self) -> None:
        try:
            before = self.counters
            self.counters = self._store.counters()
            if sum(self.counters[1:4:2]) < sum(before[1:4:2]):
                self._health.room_freed()
            self.oldest = self._store.oldest_received_at()
        except sqlite3.Error as exc:
            self._health.check_corrupt(exc, "reading the counters")
            log.error("cannot read spool counters: %s", exc)

    def _lease(self, op: _Op) -> None:
        try:
            leased, self._cursor = self._store.lease(
                op.args[0], self._cursor, self._leased, self._clock(), self._checked_upto
            )
        except sqlite3.Error as exc:
            self._health.check_corrupt(exc, "a lease")
            op.error = SpoolUnavailable(describe(exc))
            return
        self._leased.update(item.id for item in leased)
        op.result = leased

    def _load_dedup(self) -> None:
        self._log.load(self._dedup, self._clock())

    def _write_failed(self, exc: sqlite3.Error, writes: list[_Op]) -> None:
        reason = self._health.write_failed(exc)
        for op in writes:
            if op.error is None:
                op.error = SpoolUnavailable(reason)
            if op.kind in ("release", "dead_letter"):
                # the events stay in the spool; forget the lease so they are offered again
                self._leased.difference_update(i.id for i in op.args[0])
            # a failed ack keeps its leases: delivery retries the ack instead of the events
            # being sent again
        # rescan from the start: events whose release failed lie behind the cursor
        self._rewind()
        try:
            self._store.reopen()
        except (sqlite3.Error, OSError) as reopen_exc:
            log.error("cannot reopen the spool: %s", reopen_exc)

    def _rewind(self) -> None:
        self._checked_upto = max(self._checked_upto, self._cursor)
        self._cursor = 0

    def _housekeep(self) -> None:
        if self._health.failing:
            return
        self._log.purge(self._dedup, self._clock(), lambda: not self._queue.empty())
        self._refresh_counters()  # the log's bytes went down
