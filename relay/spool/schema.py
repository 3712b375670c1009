"""SQLite schema of the spool. Counters are kept by triggers, so every writer (the relay, the
`relay dlq` commands) keeps them exact and reading them costs one row, whatever the backlog."""

SCHEMA_VERSION = 1

SCHEMA = """
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

-- digests of recently stored events, for acknowledging exact duplicates without storing them
CREATE TABLE IF NOT EXISTS dedup (
    digest BLOB PRIMARY KEY,
    seen_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedup_seen ON dedup (seen_at);

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

CREATE TRIGGER IF NOT EXISTS events_ins AFTER INSERT ON events BEGIN
    UPDATE stats SET events = events + 1, event_bytes = event_bytes + length(NEW.body);
END;
CREATE TRIGGER IF NOT EXISTS events_del AFTER DELETE ON events BEGIN
    UPDATE stats SET events = events - 1, event_bytes = event_bytes - length(OLD.body);
END;
CREATE TRIGGER IF NOT EXISTS dead_ins AFTER INSERT ON dead_letters BEGIN
    UPDATE stats SET dead_letters = dead_letters + 1,
        dead_letter_bytes = dead_letter_bytes + length(NEW.body);
END;
CREATE TRIGGER IF NOT EXISTS dead_del AFTER DELETE ON dead_letters BEGIN
    UPDATE stats SET dead_letters = dead_letters - 1,
        dead_letter_bytes = dead_letter_bytes - length(OLD.body);
END;
"""
