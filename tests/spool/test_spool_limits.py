"""What counts against spool.max_bytes: a dead letter's real stored size, invalid input held to
its own share (so junk never makes the spool refuse valid events), and the dedup log."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

import relay.spool.sqlite.writer as sqlite_module
from relay.spool import (
    Incoming,
    Reject,
    SpoolFull,
    SqliteSpool,
    check_spool,
    read_stats,
    replay_dead_letters,
)
from relay.spool.sqlite.schema import ROW_OVERHEAD
from tests.helpers import eventually


def ev(n: int, pad: int = 0) -> Incoming:
    return Incoming(f'{{"n":{n},"pad":"{"x" * pad}"}}'.encode(), "test")


def junk(n: int, error: str = "line is not JSON: expected value at line 1 column 1") -> Reject:
    return Reject(raw=str(n % 10), error=error, source="http")


async def test_a_dead_letter_counts_what_it_really_stores(tmp_path: Path) -> None:
    spool = await SqliteSpool.open(tmp_path / "s", max_bytes=1 << 30, dedup_window=0)
    error = "e" * 100
    await spool.append([], [Reject(raw="x", error=error, source="http")])
    stats = spool.stats()
    # one byte of text, but also its error (first and last), source, reason and the row itself
    expected = 1 + 2 * len(error) + len("http") + len("invalid") + ROW_OVERHEAD
    assert stats.dead_letter_bytes == expected == stats.invalid_bytes
    await spool.close()
    # what the triggers counted in the file is what the writer counted in memory
    assert read_stats(tmp_path / "s", 1 << 30).dead_letter_bytes == expected
    assert check_spool(tmp_path / "s") == []


async def test_junk_fills_only_its_share_and_never_refuses_valid_events(tmp_path: Path) -> None:
    max_bytes = 200_000
    spool = await SqliteSpool.open(tmp_path / "s", max_bytes=max_bytes, dedup_window=0)
    share = spool.stats().invalid_capacity_bytes
    assert share == max_bytes // 10
    # an item bomb: far more junk than the whole spool holds, one-character lines
    not_kept = 0
    for batch in range(20):
        result = await spool.append([], [junk(i) for i in range(batch * 500, batch * 500 + 500)])
        not_kept += result.not_kept
    stats = spool.stats()
    assert share - 200 < stats.invalid_bytes <= share
    assert stats.dead_letters + not_kept == 10_000
    assert stats.invalid_not_kept == not_kept > 0
    assert spool.refusing() is None  # junk alone never makes the relay not-ready

    # valid events still get all the rest: 85 % of max_bytes in 1 KiB events
    stored = 0
    while stored < 0.85 * max_bytes:
        result = await spool.append([ev(stored, pad=1000)])
        assert result.accepted == 1
        stored += len(ev(stored, pad=1000).body)
    # a batch mixing events and junk: the events are stored, the junk is counted as not kept
    result = await spool.append([ev(-1)], [junk(1), junk(2)])
    assert (result.accepted, result.dead_lettered, result.not_kept) == (1, 0, 2)
    # the spool refuses events only when events (not junk) fill it
    with pytest.raises(SpoolFull):
        await spool.append([ev(-2, pad=max_bytes)])
    await spool.close()
    assert check_spool(tmp_path / "s") == []


async def test_the_dedup_log_counts_against_max_bytes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sqlite_module, "_HOUSEKEEP_EVERY", 0.05)
    window = 0.5
    spool = await SqliteSpool.open(tmp_path / "s", max_bytes=1 << 30, dedup_window=window)
    for b in range(3):
        await spool.append([ev(b * 100 + i) for i in range(100)])
    assert spool.stats().dedup_log_bytes == 3 * (8 * 100 + ROW_OVERHEAD)
    assert read_stats(tmp_path / "s", 1 << 30).dedup_log_bytes == 3 * (8 * 100 + ROW_OVERHEAD)
    await eventually(  # cut once the window has passed
        lambda: spool.stats().dedup_log_bytes == 0,
        10,
        "the dedup log's bytes given back",
        lambda: str(spool.stats()),
        interval=0.05,
    )
    await spool.close()
    assert check_spool(tmp_path / "s") == []


# the schema of version 2, as released (the parts the migration changes, and what they touch)
V2_SCHEMA = """
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB NOT NULL, source TEXT NOT NULL,
    received_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    rejections INTEGER NOT NULL DEFAULT 0, not_before REAL NOT NULL DEFAULT 0,
    first_error TEXT, last_error TEXT, first_attempt_at REAL, last_attempt_at REAL
);
CREATE INDEX events_retry ON events (not_before) WHERE not_before > 0;
CREATE TABLE dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT, event_id INTEGER, body BLOB NOT NULL,
    source TEXT NOT NULL, reason TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    first_error TEXT, last_error TEXT, received_at REAL NOT NULL, first_attempt_at REAL,
    dead_at REAL NOT NULL
);
CREATE TABLE dedup_log
    (id INTEGER PRIMARY KEY AUTOINCREMENT, seen_at REAL NOT NULL, digests BLOB NOT NULL);
CREATE TABLE stats (
    id INTEGER PRIMARY KEY CHECK (id = 0), events INTEGER NOT NULL,
    event_bytes INTEGER NOT NULL, dead_letters INTEGER NOT NULL,
    dead_letter_bytes INTEGER NOT NULL
);
INSERT INTO stats VALUES (0, 0, 0, 0, 0);
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE probe (data BLOB);
CREATE TRIGGER dead_ins AFTER INSERT ON dead_letters BEGIN
    UPDATE stats SET dead_letters = dead_letters + 1,
        dead_letter_bytes = dead_letter_bytes + length(NEW.body);
END;
CREATE TRIGGER dead_del AFTER DELETE ON dead_letters BEGIN
    UPDATE stats SET dead_letters = dead_letters - 1,
        dead_letter_bytes = dead_letter_bytes - length(OLD.body);
END;
PRAGMA user_version = 2;
"""


async def test_a_version_2_spool_is_migrated_with_real_sizes(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    directory.mkdir()
    conn = sqlite3.connect(directory / "spool.db", isolation_level=None)
    conn.executescript(V2_SCHEMA)
    now = time.time()
    conn.execute(
        "INSERT INTO dead_letters (body, source, reason, first_error, last_error,"
        " received_at, dead_at) VALUES (x'7b626164', 'http', 'invalid', 'bad', 'bad', ?, ?)",
        (now, now),
    )
    conn.execute(
        "INSERT INTO dead_letters (event_id, body, source, reason, first_error, last_error,"
        " received_at, dead_at) VALUES (7, x'7b7d', 'http', 'rejected', 'no', 'no', ?, ?)",
        (now, now),
    )
    conn.execute("INSERT INTO dedup_log (seen_at, digests) VALUES (?, zeroblob(16))", (now,))
    assert conn.execute("SELECT dead_letter_bytes FROM stats").fetchone()[0] == 6  # text only
    conn.close()

    spool = await SqliteSpool.open(directory, max_bytes=1 << 30, dedup_window=86400.0)
    stats = spool.stats()
    invalid = 4 + 4 + 7 + 3 + 3 + ROW_OVERHEAD
    assert stats.invalid_bytes == invalid
    assert stats.dead_letter_bytes == invalid + 2 + 4 + 8 + 2 + 2 + ROW_OVERHEAD
    assert stats.dedup_log_bytes == 16 + ROW_OVERHEAD
    await spool.close()
    assert check_spool(directory) == []
    # a replay from outside keeps the new counters exact
    replay_dead_letters(directory, [1], lambda body: body)
    assert check_spool(directory) == []
    assert read_stats(directory, 1 << 30).dead_letter_bytes == 2 + 4 + 8 + 2 + 2 + ROW_OVERHEAD
