"""The dead-letter table seen from outside the relay: list, replay into the queue, purge.

These run in the `relay dlq` commands, also while the relay runs: SQLite serialises the writers,
and the triggers keep the relay's counters exact.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from relay.spool.store import DB_NAME


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    id: int
    event_id: int | None
    reason: str
    source: str
    attempts: int
    first_error: str | None
    last_error: str | None
    received_at: float
    first_attempt_at: float | None
    dead_at: float
    body: bytes


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
    replayed ids and, per id left in place, why."""
    conn = _connect(directory)
    replayed: list[int] = []
    skipped: dict[int, str] = {}
    try:
        conn.execute("BEGIN IMMEDIATE")
        if ids is None:
            rows = conn.execute("SELECT id, body, source FROM dead_letters ORDER BY id").fetchall()
        else:
            rows = []
            for i in ids:
                row = conn.execute(
                    "SELECT id, body, source FROM dead_letters WHERE id = ?", (i,)
                ).fetchone()
                if row is None:
                    skipped[i] = "no such dead letter"
                else:
                    rows.append(row)
        now = time.time()
        for dl_id, body, source in rows:
            try:
                ready = prepare(body)
            except ValueError as exc:
                skipped[dl_id] = str(exc)
                continue
            conn.execute(
                "INSERT INTO events (body, source, received_at) VALUES (?, ?, ?)",
                (ready, source, now),
            )
            conn.execute("DELETE FROM dead_letters WHERE id = ?", (dl_id,))
            replayed.append(dl_id)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()
    return replayed, skipped


def purge_dead_letters(directory: str | Path, older_than: float) -> int:
    """Delete dead letters that died more than `older_than` seconds ago; returns how many."""
    conn = _connect(directory)
    try:
        cur = conn.execute(
            "DELETE FROM dead_letters WHERE dead_at < ?", (time.time() - older_than,)
        )
        return cur.rowcount
    finally:
        conn.close()
