"""SQLite schema of the spool. Counters are kept in one row, so reading them costs the same
whatever the backlog. Those of dead letters are kept by triggers; those of events by every
writer of `events` in the transaction that changes it (Store, and `relay dlq replay`), once per
statement instead of once per row: a trigger per row cost ~3 us per event stored or deleted.

A dead letter counts against `spool.max_bytes` with what it really stores (its raw text, its
errors, source, reason, and a fixed amount for the rest of the row), not with its text alone: a
flood of one-byte junk lines would otherwise fill the disk while counting for almost nothing.
Dead letters from ingest (invalid input, no `event_id`) are also counted apart (`invalid_bytes`),
so that they can be held to their own share of the spool. The dedup log is counted too
(`dedup_bytes`), by its writer (Store) like the events."""

from __future__ import annotations

import itertools
import os
import sqlite3
from pathlib import Path

from relay.spool.api import ROW_OVERHEAD

SCHEMA_VERSION = 3


class UnknownSchema(Exception):
    """The spool was written by another version of the relay."""


def _size_of(row: str) -> str:
    """The SQL for the bytes a dead-letter row (NEW or OLD) counts as: `api.dead_letter_size`."""
    return (
        f"(length({row}.body) + length(CAST({row}.source AS BLOB))"
        f" + length(CAST({row}.reason AS BLOB))"
        f" + coalesce(length(CAST({row}.first_error AS BLOB)), 0)"
        f" + coalesce(length(CAST({row}.last_error AS BLOB)), 0) + {ROW_OVERHEAD})"
    )


def dedup_row_size(digests: int) -> int:
    return 8 * digests + ROW_OVERHEAD


_DEAD_TRIGGERS = (
    f"""CREATE TRIGGER IF NOT EXISTS dead_ins AFTER INSERT ON dead_letters BEGIN
    UPDATE stats SET dead_letters = dead_letters + 1,
        dead_letter_bytes = dead_letter_bytes + {_size_of("NEW")},
        invalid_bytes = invalid_bytes
            + CASE WHEN NEW.event_id IS NULL THEN {_size_of("NEW")} ELSE 0 END;
END;""",
    f"""CREATE TRIGGER IF NOT EXISTS dead_del AFTER DELETE ON dead_letters BEGIN
    UPDATE stats SET dead_letters = dead_letters - 1,
        dead_letter_bytes = dead_letter_bytes - {_size_of("OLD")},
        invalid_bytes = invalid_bytes
            - CASE WHEN OLD.event_id IS NULL THEN {_size_of("OLD")} ELSE 0 END;
END;""",
)

# digests of the events stored by each commit (see dedup.py), packed 8 bytes each; appended in
# rowid order and cut at the front by rowid range
# AUTOINCREMENT: a rowid is never reused once the log was emptied, so a purge bound computed
# from older rows never reaches rows written later
_DEDUP_LOG = (
    "CREATE TABLE IF NOT EXISTS dedup_log"
    " (id INTEGER PRIMARY KEY AUTOINCREMENT, seen_at REAL NOT NULL, digests BLOB NOT NULL)"
)

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS events (
    -- AUTOINCREMENT: ids are never reused, so delivery's in-memory cursor never skips an event
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    body BLOB NOT NULL,
    source TEXT NOT NULL,
    received_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    rejections INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    first_error TEXT,
    last_error TEXT,
    first_attempt_at REAL,
    last_attempt_at REAL
);
CREATE INDEX IF NOT EXISTS events_retry ON events (not_before) WHERE not_before > 0;

CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id INTEGER,
    body BLOB NOT NULL,
    source TEXT NOT NULL,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_error TEXT,
    last_error TEXT,
    received_at REAL NOT NULL,
    first_attempt_at REAL,
    dead_at REAL NOT NULL
);

{_DEDUP_LOG};

CREATE TABLE IF NOT EXISTS stats (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    events INTEGER NOT NULL,
    event_bytes INTEGER NOT NULL,
    dead_letters INTEGER NOT NULL,
    dead_letter_bytes INTEGER NOT NULL,
    invalid_bytes INTEGER NOT NULL DEFAULT 0,
    dedup_bytes INTEGER NOT NULL DEFAULT 0
);
INSERT OR IGNORE INTO stats VALUES (0, 0, 0, 0, 0, 0, 0);

CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;

-- scratch space for the write probe that tells when a full disk has room again
CREATE TABLE IF NOT EXISTS probe (data BLOB);

{_DEAD_TRIGGERS[0]}
{_DEAD_TRIGGERS[1]}
"""

# the counters as the tables would give them, for the migration and `relay spool check`
_RECOUNT_SIZES = f"""
    (SELECT coalesce(sum({_size_of("dead_letters")}), 0) FROM dead_letters),
    (SELECT coalesce(sum({_size_of("dead_letters")}), 0) FROM dead_letters
        WHERE event_id IS NULL),
    (SELECT coalesce(sum(length(digests) + {ROW_OVERHEAD}), 0) FROM dedup_log)"""
RECOUNT = f"""SELECT
    (SELECT count(*) FROM events),
    (SELECT coalesce(sum(length(body)), 0) FROM events),
    (SELECT count(*) FROM dead_letters),{_RECOUNT_SIZES}"""


def migrate_from_1(conn: sqlite3.Connection) -> None:
    """Version 1 kept digests in a B-tree keyed by a 16-byte digest. Its rows are carried over
    (their first 8 bytes are the new digest), so duplicates of events stored before the upgrade
    are still recognised. Version 1 counted events by triggers. Runs in the caller's
    transaction, with the version bump."""
    from relay.spool.dedup import pack

    conn.execute(_DEDUP_LOG)
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'dedup'").fetchone():
        rows = conn.execute("SELECT seen_at, digest FROM dedup ORDER BY seen_at").fetchall()
        for seen_at, group in itertools.groupby(rows, key=lambda row: row[0]):
            digests = [int.from_bytes(d[:8], "big", signed=True) for _, d in group]
            conn.execute(
                "INSERT INTO dedup_log (seen_at, digests) VALUES (?, ?)", (seen_at, pack(digests))
            )
        conn.execute("DROP TABLE dedup")  # and its index
    # version 1's counters are exact; from now on the writers of `events` keep them
    conn.execute("DROP TRIGGER IF EXISTS events_ins")
    conn.execute("DROP TRIGGER IF EXISTS events_del")
    conn.execute("PRAGMA user_version=2")


def migrate_from_2(conn: sqlite3.Connection) -> None:
    """Version 2 counted a dead letter by its text alone, and neither the invalid input's share
    nor the dedup log. Reads every dead letter and log row once. In the caller's transaction."""
    conn.execute("ALTER TABLE stats ADD COLUMN invalid_bytes INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE stats ADD COLUMN dedup_bytes INTEGER NOT NULL DEFAULT 0")
    conn.execute("DROP TRIGGER IF EXISTS dead_ins")
    conn.execute("DROP TRIGGER IF EXISTS dead_del")
    for statement in _DEAD_TRIGGERS:
        conn.execute(statement)
    # not RECOUNT: its recount of the events would read the whole backlog
    dead_bytes, invalid_bytes, dedup_bytes = conn.execute(f"SELECT {_RECOUNT_SIZES}").fetchone()
    conn.execute(
        "UPDATE stats SET dead_letter_bytes = ?, invalid_bytes = ?, dedup_bytes = ?",
        (dead_bytes, invalid_bytes, dedup_bytes),
    )
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def connect(path: Path, max_page_count: int | None = None) -> sqlite3.Connection:
    """A connection to the spool file at `path`, created or migrated to SCHEMA_VERSION."""
    if not path.exists():
        # created here with 0600: SQLite gives the -wal and -shm files the same mode
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        # any of these raises DatabaseError on a file that is not a readable spool
        conn.execute("PRAGMA journal_mode=WAL").fetchone()
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        if max_page_count:
            conn.execute(f"PRAGMA max_page_count={int(max_page_count)}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, 1, 2, SCHEMA_VERSION):
            raise UnknownSchema(f"unknown spool schema version {version}")
        if version == 0:
            conn.executescript(f"BEGIN; {SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
        elif version < SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if version == 1:
                    migrate_from_1(conn)
                migrate_from_2(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        _sanity_check(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _sanity_check(conn: sqlite3.Connection) -> None:
    # Touches the stats row and both ends of the queue: cheap whatever the backlog, and enough
    # to catch a truncated or overwritten file before the relay depends on it.
    conn.execute("SELECT * FROM stats").fetchall()
    conn.execute("SELECT id, length(body) FROM events ORDER BY id LIMIT 1").fetchall()
    conn.execute("SELECT id, length(body) FROM events ORDER BY id DESC LIMIT 1").fetchall()
    conn.execute("SELECT count(*) FROM meta").fetchall()
