"""Synchronous SQLite operations of the spool. Used only from the spool's own thread."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

from relay.spool.schema import SCHEMA, SCHEMA_VERSION
from relay.spool.types import DeadLetter, Incoming, Leased, Reject, Release, SpoolFull

DB_NAME = "spool.db"
_IN_CHUNK = 500  # stays far below SQLite's limit on bound parameters


class UnknownSchema(Exception):
    """The spool was written by another version of the relay."""


def digest(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()[:16]


_MAX_DELAY = 7 * 86400.0  # no event is put off further than this, whatever a caller asks


def _bounded(delay: float) -> float:
    # not_before = inf (or NaN) would hide an event from both lease queries forever
    if not math.isfinite(delay):
        return _MAX_DELAY
    return min(max(delay, 1e-6), _MAX_DELAY)


class Store:
    """One connection to the spool file, with the operations the spool needs."""

    def __init__(self, directory: Path, *, max_page_count: int | None = None) -> None:
        self.path = directory / DB_NAME
        self._max_page_count = max_page_count
        self.conn = self._connect()

    def _connect(self) -> sqlite3.Connection:
        if not self.path.exists():
            # created here with 0600: SQLite gives the -wal and -shm files the same mode
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            # any of these raises DatabaseError on a file that is not a readable spool
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=5000")
            if self._max_page_count:
                conn.execute(f"PRAGMA max_page_count={int(self._max_page_count)}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise UnknownSchema(f"unknown spool schema version {version}")
            if version == 0:
                conn.executescript(f"BEGIN; {SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
            self._sanity_check(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _sanity_check(conn: sqlite3.Connection) -> None:
        # Touches the stats row and both ends of the queue: cheap whatever the backlog, and enough
        # to catch a truncated or overwritten file before the relay depends on it.
        conn.execute("SELECT * FROM stats").fetchall()
        conn.execute("SELECT id, length(body) FROM events ORDER BY id LIMIT 1").fetchall()
        conn.execute("SELECT id, length(body) FROM events ORDER BY id DESC LIMIT 1").fetchall()
        conn.execute("SELECT count(*) FROM meta").fetchall()

    def reopen(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()
        self.conn = self._connect()

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

    def counters(self) -> tuple[int, int, int, int]:
        row = self.conn.execute(
            "SELECT events, event_bytes, dead_letters, dead_letter_bytes FROM stats"
        ).fetchone()
        return row

    def oldest_received_at(self) -> float | None:
        row = self.conn.execute("SELECT received_at FROM events ORDER BY id LIMIT 1").fetchone()
        return row[0] if row else None

    def lease(
        self, limit: int, cursor: int, leased: set[int], now: float
    ) -> tuple[list[Leased], int]:
        """Events due for a retry first, then fresh ones past `cursor`. Returns the new cursor."""
        out: list[Leased] = []
        seen: set[int] = set()
        over = limit + len(leased)  # leased rows are filtered here, so fetch past them
        cols = "id, body, source, received_at, attempts, rejections, not_before"
        for row in self.conn.execute(
            f"SELECT {cols} FROM events WHERE not_before > 0 AND not_before <= ? "
            "ORDER BY not_before LIMIT ?",
            (now, over),
        ):
            if row[0] not in leased and len(out) < limit:
                out.append(Leased(*row[:6]))
                seen.add(row[0])
        if len(out) < limit:
            for row in self.conn.execute(
                f"SELECT {cols} FROM events WHERE id > ? ORDER BY id LIMIT ?", (cursor, over)
            ):
                if len(out) >= limit:
                    break
                cursor = row[0]
                # a row whose retry time lies ahead is left to the retry query above
                if row[0] in leased or row[0] in seen or row[6] > now:
                    continue
                out.append(Leased(*row[:6]))
        return out, cursor

    # -- writes (inside a transaction) ------------------------------------------------------------

    def append(
        self,
        events: Sequence[Incoming],
        rejects: Sequence[Reject],
        now: float,
        dedup_cutoff: float | None,
        room: int,
    ) -> tuple[int, int, int, int]:
        """Store one producer's batch: all of it or, with SpoolFull, nothing.

        Returns (accepted, duplicates, dead_lettered, event bytes, dead-letter bytes)."""
        fresh: list[Incoming] = []
        digests: list[bytes] = []
        duplicates = 0
        if dedup_cutoff is None:
            fresh = list(events)
        else:
            by_digest: dict[bytes, Incoming] = {}
            for ev in events:
                d = digest(ev.body)
                if d in by_digest:
                    duplicates += 1
                else:
                    by_digest[d] = ev
            recent = self._recent_digests(list(by_digest), dedup_cutoff)
            for d, ev in by_digest.items():
                if d in recent:
                    duplicates += 1
                else:
                    fresh.append(ev)
                    digests.append(d)
        raws = [(r.raw.encode("utf-8", "replace"), r) for r in rejects]
        event_bytes = sum(len(ev.body) for ev in fresh)
        dead_bytes = sum(len(b) for b, _ in raws)
        added = event_bytes + dead_bytes
        if added > room:
            raise SpoolFull(f"storing {added} bytes would exceed spool.max_bytes")
        if digests:
            self.conn.executemany(
                "INSERT OR REPLACE INTO dedup (digest, seen_at) VALUES (?, ?)",
                [(d, now) for d in digests],
            )
        self.conn.executemany(
            "INSERT INTO events (body, source, received_at) VALUES (?, ?, ?)",
            [(ev.body, ev.source, now) for ev in fresh],
        )
        if raws:
            self.conn.executemany(
                "INSERT INTO dead_letters (body, source, reason, first_error, last_error,"
                " received_at, dead_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(b, r.source, r.reason, r.error, r.error, now, now) for b, r in raws],
            )
        return len(fresh), duplicates, len(raws), event_bytes, dead_bytes

    def _recent_digests(self, digests: list[bytes], cutoff: float) -> set[bytes]:
        found: set[bytes] = set()
        for i in range(0, len(digests), _IN_CHUNK):
            chunk = digests[i : i + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(
                row[0]
                for row in self.conn.execute(
                    f"SELECT digest FROM dedup WHERE digest IN ({marks}) AND seen_at >= ?",
                    (*chunk, cutoff),
                )
            )
        return found

    def delete(self, ids: Iterable[int]) -> None:
        self.conn.executemany("DELETE FROM events WHERE id = ?", [(i,) for i in ids])

    def release(self, items: Sequence[Release], now: float) -> None:
        self.conn.executemany(
            "UPDATE events SET attempts = attempts + 1, rejections = rejections + ?,"
            " not_before = ?, first_error = coalesce(first_error, ?), last_error = ?,"
            " first_attempt_at = coalesce(first_attempt_at, ?), last_attempt_at = ? WHERE id = ?",
            [
                (int(r.rejected), now + _bounded(r.delay), r.error, r.error, now, now, r.id)
                for r in items
            ],
        )

    def dead_letter(self, items: Sequence[DeadLetter], now: float) -> None:
        for item in items:
            self.conn.execute(
                "INSERT INTO dead_letters (event_id, body, source, reason, attempts, first_error,"
                " last_error, received_at, first_attempt_at, dead_at)"
                " SELECT id, body, source, ?, attempts + 1, coalesce(first_error, ?), ?,"
                " received_at, coalesce(first_attempt_at, ?), ? FROM events WHERE id = ?",
                (item.reason, item.error, item.error, now, now, item.id),
            )
            self.conn.execute("DELETE FROM events WHERE id = ?", (item.id,))

    def purge_dedup(self, cutoff: float, limit: int = 20_000) -> int:
        cur = self.conn.execute(
            "DELETE FROM dedup WHERE digest IN"
            " (SELECT digest FROM dedup WHERE seen_at < ? LIMIT ?)",
            (cutoff, limit),
        )
        return cur.rowcount

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
