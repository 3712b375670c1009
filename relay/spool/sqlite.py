"""The SQLite spool: one writer thread, group commit, and an asyncio face.

Every write that arrives while a commit is in progress goes into the next commit; each caller is
released only when the commit holding its events has returned from fsync (WAL, synchronous=FULL).
The event loop never touches the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from relay import supervision
from relay.spool.api import (
    AppendResult,
    DeadLetter,
    Incoming,
    Leased,
    Reject,
    Release,
    SpoolFull,
    SpoolStats,
    SpoolUnavailable,
)
from relay.spool.dedup import RecentDigests
from relay.spool.opening import describe as _describe
from relay.spool.opening import open_store
from relay.spool.quarantine import list_quarantined
from relay.spool.refusals import INVALID_SHARE, Refusals
from relay.spool.store import CorruptRow, Store

log = logging.getLogger("relay.spool")

_PROBE_EVERY = 2.0  # seconds between write probes while refusing
_HOUSEKEEP_EVERY = 10.0
_IDLE_TICK = 1.0
_PURGE_CHUNK = 50_000  # dedup log rows per transaction: a range at the front of the table
_PURGE_ROUNDS = 40


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


class SqliteSpool(Refusals):
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
        self._store = store
        self._max_bytes = max_bytes
        self._dedup_window = dedup_window
        self._dedup = RecentDigests(dedup_window) if dedup_window > 0 else None
        self._log_purge_upto = 0  # dedup log rows up to this rowid are no longer needed
        self._lock_fd = lock_fd
        self._clock = clock
        self._on_commit = on_commit  # called from the spool's thread with each commit's seconds
        self._loop = asyncio.get_running_loop()
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._new_events = asyncio.Event()
        self._refusing: str | None = None
        self._disk_refusing = False
        self._corrupt: str | None = None  # found corrupt while running: sticky (see opening.py)
        self._invalid_capacity = int(max_bytes * INVALID_SHARE)
        self._not_kept = 0  # invalid items not stored because their share was full
        # why the last append was refused for want of room, until space is freed or one fits:
        # an event too big for what is left makes the relay not-ready below the fill mark too
        self._full: str | None = None
        # delivery state, owned by the writer thread
        self._leased: set[int] = set()
        self._cursor = 0
        self._checked_upto = 0  # the furthest the cursor ever went: ids handed out lie below
        self._quarantined = list_quarantined(directory)
        self._counters = store.counters()
        self._oldest = store.oldest_received_at()
        self._thread = threading.Thread(target=self._run, name="relay-spool", daemon=True)
        self._thread.start()
        self._closed = False

    # -- opening -------------------------------------------------------------------------------

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
        await self._wait_for_events(wait)
        return await self._submit("lease", (limit,))

    async def ack(self, ids: Sequence[int]) -> None:
        if ids:
            await self._submit("ack", (ids,))

    async def release(self, items: Sequence[Release]) -> None:
        if items:
            await self._submit("release", (items,))

    async def dead_letter(self, items: Sequence[DeadLetter]) -> None:
        if items:
            await self._submit("dead_letter", (items,))

    async def _wait_for_events(self, timeout: float) -> None:
        # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancellation that
        # arrives as the event is set, and a lease loop that swallowed its cancel never stopped
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._new_events.wait()
        self._new_events.clear()

    def stats(self) -> SpoolStats:
        events, nbytes, dead, dead_bytes, invalid_bytes, log_bytes = self._counters
        return SpoolStats(
            events=events,
            bytes=nbytes,
            capacity_bytes=self._max_bytes,
            oldest_received_at=self._oldest,
            dead_letters=dead,
            dead_letter_bytes=dead_bytes,
            set_aside=list(self._quarantined),
            refusing=self.refusing(),
            corrupt=self._corrupt,
            invalid_bytes=invalid_bytes,
            invalid_capacity_bytes=self._invalid_capacity,
            invalid_not_kept=self._not_kept,
            dedup_log_bytes=log_bytes,
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        os.close(self._lock_fd)

    # -- plumbing --------------------------------------------------------------------------------

    async def _submit(self, kind: str, args: tuple) -> Any:
        if self._closed:
            raise SpoolUnavailable("the spool is closed")
        if not self._thread.is_alive():
            raise SpoolUnavailable("the spool's writer has stopped; restart the relay")
        future = self._loop.create_future()
        self._queue.put(_Op(kind, args, future))
        return await future

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
            timeout = _PROBE_EVERY if self._refusing else _IDLE_TICK
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
            if self._refusing:
                self._probe()
            else:
                # another process (`relay dlq`) may have changed the spool meanwhile, and
                # disk space may have come back
                self._disk_short()
                before = self._counters[0]
                self._refresh_counters()
                if self._counters[0] > before:
                    self._loop.call_soon_threadsafe(self._new_events.set)
        for op in ops:
            if op.kind == "lease":
                self._lease(op)

    def alive(self) -> bool:
        return self._thread.is_alive()

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
        _, nbytes, _, dead_bytes, invalid_used, log_bytes = self._counters
        used = nbytes + dead_bytes + log_bytes
        store = self._store
        short = self._disk_short()
        if self._corrupt:
            # nothing new goes into a damaged file; acks and releases still may, so that what
            # can be read is delivered and not sent twice
            for op in writes:
                if op.kind == "append":
                    op.error = SpoolUnavailable(f"the spool file is corrupt: {self._corrupt}")
            writes = [op for op in writes if op.kind != "append"]
            if not writes:
                return
        if short:
            for op in writes:
                if op.kind == "append":
                    op.error = SpoolFull(short)
            self._log_refusal_once("disk", short)
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
                            self._invalid_capacity - invalid_used,
                        )
                    except SpoolFull as exc:
                        op.error = exc
                        self._full = str(exc)
                        self._log_refusal_once("full", str(exc))
                        continue
                    used += added + dead_added
                    invalid_used += dead_added
                    op.result = _result(accepted, dups, dl, not_kept)
                    op.added = (accepted, added, dl, dead_added)
                    if not_kept:
                        self._invalid_full(not_kept)
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
            self._check_corrupt(exc, "a write")
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
                        op.error = SpoolUnavailable(_describe(exc))
                self._commit(others)
                self._log_write_failure(exc)
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
        if self._refusing and any(op.kind == "append" and op.error is None for op in writes):
            log.warning("spool accepts writes again")
            self._refusing = None
        if not any(op.kind == "append" and op.error is not None for op in writes):
            self._refusal_logged = None
        if self._full and any(
            op.kind == "ack" or (op.kind == "append" and op.error is None) for op in writes
        ):
            self._full = None  # room was freed, or an append fitted: worth trying again
        if any(op.kind == "append" and op.added[2] for op in writes):
            self._not_kept_logging = False  # invalid input is kept again: log the next refusal
        for op in writes:
            if op.kind == "ack":
                self._leased.difference_update(op.args[0])
            elif op.kind in ("release", "dead_letter"):
                self._leased.difference_update(item.id for item in op.args[0])
        if all(op.kind == "append" for op in writes):
            # the hot path: what was added is known, so no need to read the counters back
            events, nbytes, dead, dead_bytes, invalid_bytes, log_bytes = self._counters
            for op in writes:
                n, b, d, db = op.added
                events, nbytes, dead, dead_bytes = events + n, nbytes + b, dead + d, dead_bytes + db
                invalid_bytes += db  # an append's dead letters are all invalid input
            log_bytes += log_added
            self._counters = (events, nbytes, dead, dead_bytes, invalid_bytes, log_bytes)
            if self._oldest is None and events:
                self._oldest = self._clock()
        else:
            self._refresh_counters()

    def _refresh_counters(self) -> None:
        try:
            before = self._counters
            self._counters = self._store.counters()
            if sum(self._counters[1:4:2]) < sum(before[1:4:2]):
                self._full = None  # e.g. `relay dlq purge` freed room from outside
            self._oldest = self._store.oldest_received_at()
        except sqlite3.Error as exc:
            self._check_corrupt(exc, "reading the counters")
            log.error("cannot read spool counters: %s", exc)

    def _lease(self, op: _Op) -> None:
        try:
            leased, self._cursor = self._store.lease(
                op.args[0], self._cursor, self._leased, self._clock(), self._checked_upto
            )
        except sqlite3.Error as exc:
            self._check_corrupt(exc, "a lease")
            op.error = SpoolUnavailable(_describe(exc))
            return
        self._leased.update(item.id for item in leased)
        op.result = leased

    def _load_dedup(self) -> None:
        store, dedup = self._store, self._dedup
        try:
            last = store.last_dedup_rowid()
            self._log_purge_upto = last
            if dedup is None:
                return
            first = True
            for rowid, seen_at, digests in store.read_dedup_log(self._clock() - dedup.window):
                if first:
                    self._log_purge_upto = rowid - 1
                    first = False
                # a digest logged twice (stored again once forgotten) is then forgotten with
                # its older bucket: early, which only lets a duplicate through
                dedup.add(digests, seen_at, rowid)
        except CorruptRow as exc:
            self._found_corrupt("the dedup log", str(exc))
        except sqlite3.Error as exc:
            self._check_corrupt(exc, "the dedup log")
            # without them a producer's retry may be stored twice, but nothing is lost
            log.error("cannot read the spool's dedup log: %s", _describe(exc))

    def _rewind(self) -> None:
        self._checked_upto = max(self._checked_upto, self._cursor)
        self._cursor = 0

    def _housekeep(self) -> None:
        if self._refusing:
            return
        if self._dedup is not None:
            self._dedup.expire(self._clock())
            self._log_purge_upto = max(self._log_purge_upto, self._dedup.forgotten_rowid)
        self._purge_dedup_log()
        self._refresh_counters()  # the log's bytes went down

    def _purge_dedup_log(self) -> None:
        for _ in range(_PURGE_ROUNDS):
            # short transactions, so producers waiting on a commit are not held up
            try:
                self._store.begin()
                deleted = self._store.purge_dedup_log(self._log_purge_upto, _PURGE_CHUNK)
                self._store.commit()
            except sqlite3.Error as exc:
                self._check_corrupt(exc, "housekeeping")
                self._store.rollback()
                log.warning("spool housekeeping failed: %s", _describe(exc))
                return
            if deleted < _PURGE_CHUNK or not self._queue.empty():
                return


# Results are frozen, so the common ones (one event per request: accepted, or a duplicate)
# are built once and shared instead of once per request.
_RESULTS: dict[tuple[int, int, int, int], AppendResult] = {}


def _result(accepted: int, duplicates: int, dead_lettered: int, not_kept: int) -> AppendResult:
    key = (accepted, duplicates, dead_lettered, not_kept)
    result = _RESULTS.get(key)
    if result is None:
        result = AppendResult(accepted, duplicates, dead_lettered, not_kept)
        if accepted + duplicates + dead_lettered + not_kept <= 1:
            _RESULTS[key] = result
    return result
