"""The dead-letter table seen from outside the relay: list, replay into the queue, purge.

These run in the `relay dlq` commands, also while the relay runs: SQLite serialises the writers,
triggers keep the dead-letter counters exact, and a replay counts the events it adds in its own
transaction (the schema has no trigger for events).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from relay.spool.api import DeadLetterRecord
from relay.spool.sqlite.schema import SCHEMA_VERSION
from relay.spool.sqlite.sql import DB_NAME

_CHUNK = 1000  # rows per transaction: the relay waits at most a few milliseconds for the lock

_COLUMNS = (
    "id, event_id, reason, source, attempts, first_error, last_error, received_at,"
    " first_attempt_at, dead_at, body"
)


def _connect(directory: str | Path) -> sqlite3.Connection:
    db = Path(directory) / DB_NAME
    if not db.exists():
        raise FileNotFoundError(f"no spool at {db}")
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def list_dead_letters(directory: str | Path, limit: int = 1000) -> list[DeadLetterRecord]:
    conn = _connect(directory)
    try:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM dead_letters ORDER BY id LIMIT ?", (limit,)
        ).fetchall()
    finally:
        conn.close()
    return [DeadLetterRecord(*row) for row in rows]


def replay_dead_letters(
    directory: str | Path,
    ids: Sequence[int] | None,
    prepare: Callable[[bytes], bytes],
) -> tuple[list[int], dict[int, str]]:
    """Move dead letters back into the queue (all of them when `ids` is None), as new events.

    `prepare` turns a stored body into the body to queue, or raises ValueError when it cannot be
    sent (e.g. raw input that never was a valid event); those stay dead letters. Returns the
    replayed ids and, per id left in place, why. Works in short transactions, so a running
    relay is never kept waiting for the write lock."""
    conn = _connect(directory)
    replayed: list[int] = []
    skipped: dict[int, str] = {}
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            # another version counts events differently: its counters would go wrong
            raise sqlite3.DatabaseError(
                f"it has schema version {version}, this relay writes version "
                f"{SCHEMA_VERSION}; run this relay on it once (it upgrades the spool), then replay"
            )
        if ids is not None:
            wanted = sorted(set(ids))
            for chunk_start in range(0, len(wanted), _CHUNK):
                chunk = wanted[chunk_start : chunk_start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT id, body, source FROM dead_letters WHERE id IN ({marks})", chunk
                ).fetchall()
                found = {row[0] for row in rows}
                skipped.update((i, "no such dead letter") for i in chunk if i not in found)
                _replay_rows(conn, rows, prepare, replayed, skipped)
            return replayed, skipped
        after = 0
        while True:
            rows = conn.execute(
                "SELECT id, body, source FROM dead_letters WHERE id > ? ORDER BY id LIMIT ?",
                (after, _CHUNK),
            ).fetchall()
            if not rows:
                return replayed, skipped
            after = rows[-1][0]
            _replay_rows(conn, rows, prepare, replayed, skipped)
    finally:
        conn.close()


def _replay_rows(
    conn: sqlite3.Connection,
    rows: list[tuple[int, bytes, str]],
    prepare: Callable[[bytes], bytes],
    replayed: list[int],
    skipped: dict[int, str],
) -> None:
    now = time.time()
    ready: list[tuple[int, bytes, str]] = []
    for dl_id, body, source in rows:
        try:
            ready.append((dl_id, prepare(body), source))
        except ValueError as exc:
            skipped[dl_id] = str(exc)
    if not ready:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        n = nbytes = 0
        for dl_id, body, source in ready:
            # only if still there: another replay may have taken it meanwhile
            cur = conn.execute("DELETE FROM dead_letters WHERE id = ?", (dl_id,))
            if cur.rowcount:
                (size,) = conn.execute(
                    "INSERT INTO events (body, source, received_at) VALUES (?, ?, ?)"
                    " RETURNING length(body)",
                    (body, source, now),
                ).fetchone()
                n += 1
                nbytes += size
                replayed.append(dl_id)
        conn.execute(
            "UPDATE stats SET events = events + ?, event_bytes = event_bytes + ?", (n, nbytes)
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def purge_dead_letters(directory: str | Path, older_than: float) -> int:
    """Delete dead letters that died more than `older_than` seconds ago; returns how many."""
    conn = _connect(directory)
    cutoff = time.time() - older_than
    purged = 0
    try:
        while True:
            cur = conn.execute(
                "DELETE FROM dead_letters WHERE id IN"
                " (SELECT id FROM dead_letters WHERE dead_at < ? LIMIT ?)",
                (cutoff, _CHUNK),
            )
            purged += cur.rowcount
            if cur.rowcount < _CHUNK:
                return purged
    finally:
        conn.close()
