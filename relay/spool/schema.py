"""SQLite schema of the spool. Counters are kept in one row, so reading them costs the same
whatever the backlog. Those of dead letters are kept by triggers; those of events by every
writer of `events` in the transaction that changes it (Store, and `relay dlq replay`), once per
statement instead of once per row: a trigger per row cost ~3 us per event stored or deleted."""

import itertools
import sqlite3

SCHEMA_VERSION = 2

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
    dead_letter_bytes INTEGER NOT NULL
);
INSERT OR IGNORE INTO stats VALUES (0, 0, 0, 0, 0);

CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;

-- scratch space for the write probe that tells when a full disk has room again
CREATE TABLE IF NOT EXISTS probe (data BLOB);

CREATE TRIGGER IF NOT EXISTS dead_ins AFTER INSERT ON dead_letters BEGIN
    UPDATE stats SET dead_letters = dead_letters + 1,
        dead_letter_bytes = dead_letter_bytes + length(NEW.body);
END;
CREATE TRIGGER IF NOT EXISTS dead_del AFTER DELETE ON dead_letters BEGIN
    UPDATE stats SET dead_letters = dead_letters - 1,
        dead_letter_bytes = dead_letter_bytes - length(OLD.body);
END;
"""


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
