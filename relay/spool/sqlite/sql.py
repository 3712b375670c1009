"""The SQLite spool's statements: stateless apart from the rows of the commit being built.
Used only from the spool's writer thread, which owns the transaction."""

from __future__ import annotations

import contextlib
import sqlite3
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from relay.spool.api import (
    DeadLetter,
    Incoming,
    Leased,
    Reject,
    Release,
    SpoolFull,
    bounded_delay,
    keep_rejects,
)
from relay.spool.dedup import RecentDigests, digest, pack, unpack
from relay.spool.sqlite.schema import connect, dedup_row_size

DB_NAME = "spool.db"
_MAX_ROWS = 256  # per INSERT statement: 768 parameters, far below SQLite's limit (32 766)
_EXACT_ROWS = 64  # up to this many rows, one statement of that exact size (64 + 2 kept prepared)


class CorruptRow(Exception):
    """A row SQLite reads fine but that no relay can have written (e.g. a truncated blob)."""


class Store:
    """One connection to the spool file, with the operations the spool needs."""

    def __init__(self, directory: Path, *, max_page_count: int | None = None) -> None:
        self.path = directory / DB_NAME
        self._max_page_count = max_page_count
        self._pending: list = []  # body, source, body, source, ... of events not yet written
        self._pending_bytes = 0
        self._inserts: dict[int, str] = {}  # multi-row INSERT statements by number of rows
        self.conn = connect(self.path, self._max_page_count)

    def reopen(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()
        self.conn = connect(self.path, self._max_page_count)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.conn.close()

    # -- transactions -------------------------------------------------------------------------

    def begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        try:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    # -- reads ----------------------------------------------------------------------------------

    def counters(self) -> tuple[int, int, int, int, int, int]:
        """(events, event bytes, dead letters, dead-letter bytes, of which invalid input,
        dedup-log bytes)."""
        return self.conn.execute(
            "SELECT events, event_bytes, dead_letters, dead_letter_bytes, invalid_bytes,"
            " dedup_bytes FROM stats"
        ).fetchone()

    def oldest_received_at(self) -> float | None:
        row = self.conn.execute("SELECT received_at FROM events ORDER BY id LIMIT 1").fetchone()
        return row[0] if row else None

    def lease(
        self, limit: int, cursor: int, leased: set[int], now: float, checked_upto: int = 0
    ) -> tuple[list[Leased], int]:
        """Events due for a retry first, then fresh ones past `cursor`. Returns the new cursor.

        Ids past `checked_upto` need no check against `leased`: the cursor has never passed
        them, so they were never handed out (the caller raises it when it moves the cursor
        back)."""
        out: list[Leased] = []
        make = Leased._make
        over = limit + len(leased)  # leased rows are filtered here, so fetch past them
        cols = "id, body, source, received_at, attempts, rejections"
        for row in self.conn.execute(
            f"SELECT {cols} FROM events WHERE not_before > 0 AND not_before <= ? "
            "ORDER BY not_before LIMIT ?",
            (now, over),
        ):
            if row[0] not in leased and len(out) < limit:
                out.append(make(row))
        want = limit - len(out)
        if want <= 0:
            return out, cursor
        # rows given back for a retry are the retry query's alone (due or not); the cursor
        # moves past them all the same
        fresh = f"SELECT {cols} FROM events WHERE id > ? AND not_before = 0 ORDER BY id LIMIT ?"
        if cursor >= checked_upto:
            rows = self.conn.execute(fresh, (cursor, want)).fetchall()
            if rows:
                out.extend(map(make, rows))
                cursor = rows[-1][0]
            return out, cursor
        for row in self.conn.execute(fresh, (cursor, want + len(leased))):
            if len(out) >= limit:
                break
            cursor = row[0]
            if cursor in leased:
                continue
            out.append(make(row))
        return out, cursor

    # -- writes (inside a transaction) ------------------------------------------------------------

    def append(
        self,
        events: Sequence[Incoming],
        rejects: Sequence[Reject],
        now: float,
        dedup: RecentDigests | None,
        room: int,
        invalid_room: int,
    ) -> tuple[int, int, int, int, int, int]:
        """Take one producer's batch into the open transaction: all its events or, with
        SpoolFull, nothing. Its events are written by `flush`, together with the other batches
        of the same commit. Of its rejects, those that fit in `invalid_room` (and in the room the
        events leave) are kept, in order; the rest are not stored: junk never costs an event.

        Returns (accepted, duplicates, dead_lettered, event bytes, dead-letter bytes,
        rejects not kept)."""
        # One producer's request holds a single event in the common case (one event per POST):
        # this runs once per request at ingest rates, so it avoids generators and the general
        # path's containers where it can.
        duplicates = 0
        if dedup is None:
            fresh = events
            digests = None
        else:
            digests = {}
            known = dedup.known
            staged = dedup.staged_set
            for ev in events:
                d = digest(ev.body)
                if d in digests or d in known or d in staged:
                    duplicates += 1
                else:
                    digests[d] = ev
            fresh = digests.values()
        event_bytes = 0
        for ev in fresh:
            event_bytes += len(ev.body)
        if event_bytes and event_bytes > room:
            raise SpoolFull(f"storing {event_bytes} bytes would exceed spool.max_bytes")
        if rejects:
            raws, dead_bytes, not_kept = keep_rejects(
                rejects, min(room - event_bytes, invalid_room)
            )
        else:
            raws, dead_bytes, not_kept = (), 0, 0
        if digests:
            dedup.stage(digests)
        self._pending_bytes += event_bytes
        rows = self._pending
        for ev in fresh:
            rows.append(ev.body)
            rows.append(ev.source)
        if raws:
            self.conn.executemany(
                "INSERT INTO dead_letters (body, source, reason, first_error, last_error,"
                " received_at, dead_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(b, r.source, r.reason, r.error, r.error, now, now) for b, r in raws],
            )
        return len(fresh), duplicates, len(raws), event_bytes, dead_bytes, not_kept

    def flush(self, now: float, dedup: RecentDigests | None) -> int:
        """Write the events taken by `append` (and their digests) in few statements. Returns
        the bytes added to the dedup log."""
        rows, self._pending = self._pending, []
        nbytes, self._pending_bytes = self._pending_bytes, 0
        total, done = len(rows) // 2, 0
        while done < total:
            # one statement for a commit's usual size (each costs a step and a GIL round trip);
            # past _EXACT_ROWS powers of two, so that few distinct statements are prepared
            left = total - done
            n = left if left <= _EXACT_ROWS else min(_MAX_ROWS, 1 << (left.bit_length() - 1))
            sql = self._inserts.get(n)
            if sql is None:
                sql = "INSERT INTO events (body, source, received_at) VALUES " + ",".join(
                    ["(?, ?, ?)"] * n
                )
                self._inserts[n] = sql
            params = []
            for i in range(2 * done, 2 * (done + n), 2):
                params += (rows[i], rows[i + 1], now)
            self.conn.execute(sql, params)
            done += n
        log_bytes = 0
        if dedup is not None and dedup.staged:
            dedup.staged_rowid = self.conn.execute(
                "INSERT INTO dedup_log (seen_at, digests) VALUES (?, ?)", (now, pack(dedup.staged))
            ).lastrowid
            log_bytes = dedup_row_size(len(dedup.staged))
        if total or log_bytes:
            self.count_events(total, nbytes, log_bytes)
        return log_bytes

    def discard_pending(self) -> None:
        self._pending = []
        self._pending_bytes = 0

    def count_events(self, n: int, nbytes: int, log_bytes: int = 0) -> None:
        """Every change to `events` (and to `dedup_log`) is counted here, in its transaction
        (no triggers); one statement for both on the hot path."""
        self.conn.execute(
            "UPDATE stats SET events = events + ?, event_bytes = event_bytes + ?,"
            " dedup_bytes = dedup_bytes + ?",
            (n, nbytes, log_bytes),
        )

    def delete(self, ids: Iterable[int]) -> None:
        """One DELETE per run of consecutive ids: delivery acks what it leased, mostly in order."""
        ranges: list[tuple[int, int]] = []
        for i in sorted(ids):
            if ranges and ranges[-1][1] >= i - 1:
                ranges[-1] = (ranges[-1][0], i)
            else:
                ranges.append((i, i))
        n = nbytes = 0
        for r in ranges:
            sizes = self.conn.execute(
                "DELETE FROM events WHERE id BETWEEN ? AND ? RETURNING length(body)", r
            ).fetchall()
            n += len(sizes)
            nbytes += sum(size for (size,) in sizes)
        if n:
            self.count_events(-n, -nbytes)

    def release(self, items: Sequence[Release], now: float) -> None:
        self.conn.executemany(
            "UPDATE events SET attempts = attempts + 1, rejections = rejections + ?,"
            " not_before = ?, first_error = coalesce(first_error, ?), last_error = ?,"
            " first_attempt_at = coalesce(first_attempt_at, ?), last_attempt_at = ? WHERE id = ?",
            [
                (int(r.rejected), now + bounded_delay(r.delay), r.error, r.error, now, now, r.id)
                for r in items
            ],
        )

    def dead_letter(self, items: Sequence[DeadLetter], now: float) -> None:
        n = nbytes = 0
        for item in items:
            self.conn.execute(
                "INSERT INTO dead_letters (event_id, body, source, reason, attempts, first_error,"
                " last_error, received_at, first_attempt_at, dead_at)"
                " SELECT id, body, source, ?, attempts + 1, coalesce(first_error, ?), ?,"
                " received_at, coalesce(first_attempt_at, ?), ? FROM events WHERE id = ?",
                (item.reason, item.error, item.error, now, now, item.id),
            )
            for (size,) in self.conn.execute(
                "DELETE FROM events WHERE id = ? RETURNING length(body)", (item.id,)
            ).fetchall():
                n += 1
                nbytes += size
        if n:
            self.count_events(-n, -nbytes)

    def read_dedup_log(self, cutoff: float) -> Iterator[tuple[int, float, array]]:
        """The digests logged since `cutoff`, one row per commit in log order:
        (rowid, seen_at, digests)."""
        for rowid, seen_at, blob in self.conn.execute(
            "SELECT rowid, seen_at, digests FROM dedup_log WHERE seen_at >= ? ORDER BY rowid",
            (cutoff,),
        ):
            if not isinstance(blob, bytes) or len(blob) % 8:
                raise CorruptRow(f"dedup log row {rowid} is truncated or not a list of digests")
            yield rowid, seen_at, unpack(blob)

    def last_dedup_rowid(self) -> int:
        return self.conn.execute("SELECT coalesce(max(rowid), 0) FROM dedup_log").fetchone()[0]

    def purge_dedup_log(self, upto: int, limit: int) -> int:
        """Delete up to `limit` of the oldest log rows with rowid <= `upto`: a range at the
        front of the table. Returns how many."""
        first = self.conn.execute("SELECT min(rowid) FROM dedup_log").fetchone()[0]
        if first is None or first > upto:
            return 0
        sizes = self.conn.execute(
            "DELETE FROM dedup_log WHERE rowid <= ? RETURNING length(digests)",
            (min(upto, first + limit - 1),),
        ).fetchall()
        if sizes:
            log_bytes = sum(dedup_row_size(0) + size for (size,) in sizes)
            self.count_events(0, 0, -log_bytes)
        return len(sizes)

    def probe(self, size: int) -> None:
        """Write and fsync `size` bytes of scratch data: succeeds only when there is room again."""
        self.begin()
        try:
            self.conn.execute("INSERT INTO probe (data) VALUES (zeroblob(?))", (size,))
            self.conn.execute("DELETE FROM probe")
            self.commit()
        except BaseException:
            self.rollback()
            raise
