"""The SQLite spool, on real files: group commit, restarts, the dedup log, migrations, failures,
quarantine. What every backend must do is in test_contract.py."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import stat
import sys
import time
from pathlib import Path

import pytest

import relay.spool.dedup as dedup_module
import relay.spool.sqlite.writer as sqlite_module
from relay.errors import UserError
from relay.spool import (
    DeadLetter,
    Incoming,
    Reject,
    Release,
    SpoolUnavailable,
    SqliteSpool,
    check_spool,
    list_dead_letters,
    read_stats,
)

GiB = 1 << 30


def ev(n: int, pad: int = 0) -> Incoming:
    return Incoming(f'{{"n":{n},"pad":"{"x" * pad}"}}'.encode(), "test")


async def open_spool(path: Path, **kw) -> SqliteSpool:
    kw.setdefault("max_bytes", GiB)
    kw.setdefault("dedup_window", 86400.0)
    return await SqliteSpool.open(path, **kw)


async def test_events_and_attempts_survive_reopen(tmp_path: Path) -> None:
    spool = await open_spool(tmp_path / "s")
    await spool.append([ev(i) for i in range(3)])
    [a, *_] = await spool.lease(1)
    await spool.release([Release(a.id, 0.0, "x")])
    await spool.close()

    spool = await open_spool(tmp_path / "s")
    assert spool.stats().events == 3
    items = await spool.lease(10)
    assert [i.body for i in items] == [ev(i).body for i in range(3)]
    assert items[0].attempts == 1
    await spool.close()


async def test_digests_survive_a_restart(tmp_path: Path) -> None:
    spool = await open_spool(tmp_path / "s")
    await spool.append([ev(i) for i in range(100)])
    await spool.close()
    spool = await open_spool(tmp_path / "s")
    result = await spool.append([ev(i) for i in range(95, 105)])
    assert (result.accepted, result.duplicates) == (5, 5)
    assert spool.stats().events == 105  # the dedup log is not counted as events
    await spool.close()
    assert check_spool(tmp_path / "s") == []


async def test_remembered_digests_are_capped(tmp_path: Path, monkeypatch) -> None:
    # the cap forgets the oldest digests early: their duplicates get through, new events never
    # become duplicates, and the same holds after a restart (the log is read back under the cap)
    monkeypatch.setattr(dedup_module, "MAX_DIGESTS", 640)
    spool = await open_spool(tmp_path / "s")
    for b in range(20):
        await spool.append([ev(b * 100 + i) for i in range(100)])
    for reopen in (False, True):
        if reopen:
            await spool.close()
            spool = await open_spool(tmp_path / "s")
        recent = await spool.append([ev(1900 + i) for i in range(100)])
        assert recent.duplicates == 100
        fresh = await spool.append([ev(10_000 * (2 + reopen) + i) for i in range(100)])
        assert fresh.accepted == 100
    oldest = await spool.append([ev(i) for i in range(100)])
    assert oldest.accepted == 100
    await spool.close()


async def test_dedup_log_is_cut_once_the_window_has_passed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sqlite_module, "_HOUSEKEEP_EVERY", 0.05)
    window = 1.0
    spool = await open_spool(tmp_path / "s", dedup_window=window)
    for b in range(5):
        await spool.append([ev(b * 100 + i) for i in range(100)])

    def log_rows() -> int:
        conn = sqlite3.connect(tmp_path / "s" / "spool.db")
        try:
            return conn.execute("SELECT count(*) FROM dedup_log").fetchone()[0]
        finally:
            conn.close()

    assert log_rows() > 0
    await asyncio.sleep(window)
    for _ in range(100):  # housekeeping runs in the writer's idle ticks
        if log_rows() == 0:
            break
        await asyncio.sleep(0.1)
    assert log_rows() == 0
    assert spool.stats().events == 500
    # written after the log was emptied (a reused rowid would fall under the purge bound of
    # the rows before): must outlive the housekeeping rounds that follow within the window
    await spool.append([ev(1000)])
    await asyncio.sleep(window / 4)
    assert log_rows() == 1
    await spool.close()


async def test_dedup_log_is_emptied_when_dedup_is_turned_off(tmp_path: Path, monkeypatch) -> None:
    spool = await open_spool(tmp_path / "s")
    await spool.append([ev(i) for i in range(50)])
    await spool.close()
    monkeypatch.setattr(sqlite_module, "_HOUSEKEEP_EVERY", 0.05)
    spool = await open_spool(tmp_path / "s", dedup_window=0)
    assert (await spool.append([ev(1)])).accepted == 1  # no dedup at all now
    conn = sqlite3.connect(tmp_path / "s" / "spool.db")
    try:
        for _ in range(100):
            if conn.execute("SELECT count(*) FROM dedup_log").fetchone()[0] == 0:
                break
            await asyncio.sleep(0.1)
        assert conn.execute("SELECT count(*) FROM dedup_log").fetchone()[0] == 0
    finally:
        conn.close()
    await spool.close()


# the schema of version 1, as released: digests in a B-tree keyed by 16 bytes of the SHA-256
V1_SCHEMA = """
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
CREATE TABLE dedup (digest BLOB PRIMARY KEY, seen_at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX dedup_seen ON dedup (seen_at);
CREATE TABLE stats (
    id INTEGER PRIMARY KEY CHECK (id = 0), events INTEGER NOT NULL, event_bytes INTEGER NOT NULL,
    dead_letters INTEGER NOT NULL, dead_letter_bytes INTEGER NOT NULL
);
INSERT INTO stats VALUES (0, 0, 0, 0, 0);
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE probe (data BLOB);
CREATE TRIGGER events_ins AFTER INSERT ON events BEGIN
    UPDATE stats SET events = events + 1, event_bytes = event_bytes + length(NEW.body);
END;
CREATE TRIGGER events_del AFTER DELETE ON events BEGIN
    UPDATE stats SET events = events - 1, event_bytes = event_bytes - length(OLD.body);
END;
CREATE TRIGGER dead_ins AFTER INSERT ON dead_letters BEGIN
    UPDATE stats SET dead_letters = dead_letters + 1,
        dead_letter_bytes = dead_letter_bytes + length(NEW.body);
END;
CREATE TRIGGER dead_del AFTER DELETE ON dead_letters BEGIN
    UPDATE stats SET dead_letters = dead_letters - 1,
        dead_letter_bytes = dead_letter_bytes - length(OLD.body);
END;
PRAGMA user_version = 1;
"""


async def test_a_version_1_spool_is_migrated_with_its_events(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    directory.mkdir()
    conn = sqlite3.connect(directory / "spool.db")
    conn.executescript(V1_SCHEMA)
    now = time.time()
    for i in range(3):
        conn.execute(
            "INSERT INTO events (body, source, received_at) VALUES (?, 'test', ?)",
            (ev(i).body, now),
        )
        conn.execute(
            "INSERT INTO dedup VALUES (?, ?)", (hashlib.sha256(ev(i).body).digest()[:16], now)
        )
    conn.execute(
        "INSERT INTO dead_letters (body, source, reason, received_at, dead_at)"
        " VALUES (x'7b626164', 'test', 'invalid', ?, ?)",
        (now, now),
    )
    conn.commit()
    conn.close()

    spool = await open_spool(directory)
    stats = spool.stats()
    assert (stats.events, stats.dead_letters) == (3, 1)
    # the version 1 digests were carried over: a producer's retry is still a duplicate
    result = await spool.append([ev(2), ev(3)])
    assert (result.accepted, result.duplicates) == (1, 1)
    items = await spool.lease(10)
    assert [i.body for i in items] == [ev(i).body for i in range(4)]
    await spool.close()
    assert check_spool(directory) == []
    assert [d.body for d in list_dead_letters(directory)] == [b"{bad"]
    conn = sqlite3.connect(directory / "spool.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert "dedup_log" in tables and "dedup" not in tables and "dedup_seen" not in tables
    conn.close()


async def test_concurrent_producers_share_commits(tmp_path: Path) -> None:
    spool = await open_spool(tmp_path / "s")

    async def producer(p: int) -> int:
        n = 0
        for i in range(50):
            n += (await spool.append([ev(p * 1000 + i)])).accepted
        return n

    counts = await asyncio.gather(*(producer(p) for p in range(40)))
    assert sum(counts) == 2000
    assert spool.stats().events == 2000
    await spool.close()
    assert read_stats(tmp_path / "s", GiB).events == 2000


async def test_failed_write_is_refused_and_recovers(tmp_path: Path) -> None:
    # SQLite's page limit stands in for a full disk: the commit fails, nothing is acknowledged
    spool = await open_spool(tmp_path / "s", max_page_count=40)
    stored = 0
    with pytest.raises(SpoolUnavailable):
        for i in range(10_000):
            stored += (await spool.append([ev(i, pad=500)])).accepted
    assert spool.refusing()
    assert spool.stats().events == stored
    # freeing space lets writes succeed again without a restart
    while batch := await spool.lease(50):
        await spool.ack([i.id for i in batch])
    for _ in range(50):
        if not spool.refusing():
            break
        await asyncio.sleep(0.1)
    assert spool.refusing() is None
    assert (await spool.append([ev(999_999)])).accepted == 1
    await spool.close()


async def test_corrupt_spool_is_quarantined_not_fatal(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    directory.mkdir()
    (directory / "spool.db").write_bytes(b"this is not a database" * 1000)
    spool = await open_spool(directory)
    stats = spool.stats()
    assert stats.events == 0
    assert len(stats.set_aside) == 1
    assert (await spool.append([ev(1)])).accepted == 1
    await spool.close()
    moved = directory / stats.set_aside[0] / "spool.db"
    assert moved.read_bytes().startswith(b"this is not a database")
    assert read_stats(directory, GiB).set_aside == stats.set_aside


async def test_one_relay_per_spool_and_private_directory(tmp_path: Path) -> None:
    spool = await open_spool(tmp_path / "s")
    with pytest.raises(UserError, match="in use by another relay"):
        await open_spool(tmp_path / "s")
    mode = stat.S_IMODE(os.stat(tmp_path / "s").st_mode)
    assert mode == 0o700
    await spool.close()


async def test_a_spool_from_another_version_is_refused_not_quarantined(tmp_path: Path) -> None:
    spool = await open_spool(tmp_path / "s")
    await spool.append([ev(1)])
    await spool.close()
    import sqlite3

    conn = sqlite3.connect(tmp_path / "s" / "spool.db")
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(UserError, match="schema version 99"):
        await open_spool(tmp_path / "s")
    assert not (tmp_path / "s" / "quarantine").exists()
    # the lock was released: after a fix the relay can open it again
    conn = sqlite3.connect(tmp_path / "s" / "spool.db")
    conn.execute("PRAGMA user_version=3")
    conn.close()
    spool = await open_spool(tmp_path / "s")
    assert spool.stats().events == 1
    await spool.close()


async def test_acks_survive_an_append_that_does_not_fit(tmp_path: Path) -> None:
    spool = await open_spool(tmp_path / "s", max_page_count=40)
    with pytest.raises(SpoolUnavailable):
        for i in range(10_000):
            await spool.append([ev(i, pad=500)])
    leased = await spool.lease(20)
    before = spool.stats().events
    results = await asyncio.gather(
        spool.append([ev(10**6 + i, pad=500) for i in range(50)]),
        spool.ack([e.id for e in leased]),
        return_exceptions=True,
    )
    assert isinstance(results[0], SpoolUnavailable)
    assert results[1] is None  # the ack was committed on its own
    assert spool.stats().events == before - 20
    await spool.close()


async def test_writer_thread_outlives_an_unexpected_error(tmp_path: Path) -> None:
    calls = []

    def flaky(seconds: float) -> None:
        calls.append(seconds)
        if len(calls) == 1:
            raise RuntimeError("boom")

    spool = await open_spool(tmp_path / "s", on_commit=flaky)
    with pytest.raises(SpoolUnavailable):
        await spool.append([ev(1)])
    assert spool.alive()
    assert (await spool.append([ev(2)])).accepted == 1
    await spool.close()


async def test_release_never_hides_an_event_forever(tmp_path: Path) -> None:
    import math
    import sqlite3

    spool = await open_spool(tmp_path / "s")
    await spool.append([ev(1)])
    [item] = await spool.lease(1)
    await spool.release([Release(item.id, math.inf, "Retry-After: 1e999")])
    await spool.close()
    conn = sqlite3.connect(tmp_path / "s" / "spool.db")
    (not_before,) = conn.execute("SELECT not_before FROM events").fetchone()
    conn.close()
    assert math.isfinite(not_before)


async def test_counters_follow_changes_made_by_another_process(tmp_path: Path) -> None:
    from relay.spool import purge_dead_letters

    spool = await open_spool(tmp_path / "s")
    await spool.append([], [Reject(raw="x", error="bad", source="t")])
    assert spool.stats().dead_letters == 1
    assert await asyncio.to_thread(purge_dead_letters, tmp_path / "s", -1.0) == 1
    for _ in range(30):
        if spool.stats().dead_letters == 0:
            break
        await asyncio.sleep(0.1)
    assert spool.stats().dead_letters == 0
    await spool.close()


async def test_counters_stay_exact_with_a_replay_from_another_process(tmp_path: Path) -> None:
    # events are counted by each writer in its own transaction (no triggers): the relay storing,
    # acking and dead-lettering while `relay dlq replay` moves dead letters back from outside
    spool = await open_spool(tmp_path / "s")
    rejects = [Reject(raw=f'{{"r":{i}}}', error="bad", source="t") for i in range(3000)]
    await spool.append([ev(i) for i in range(100)], rejects)
    code = (
        "import sys\n"
        "from relay.spool import replay_dead_letters\n"
        "print(len(replay_dead_letters(sys.argv[1], None, lambda body: body)[0]))\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, str(tmp_path / "s"), stdout=asyncio.subprocess.PIPE
    )
    n = 1000
    while proc.returncode is None:
        await spool.append([ev(n + i, pad=n % 7) for i in range(10)])
        n += 10
        items = await spool.lease(12)
        await spool.ack([i.id for i in items[:8]])
        await spool.dead_letter([DeadLetter(i.id, "invalid", "no") for i in items[8:10]])
        await spool.release([Release(i.id, 0.0, "later") for i in items[10:]])
        await asyncio.sleep(0)
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    replayed = int(out)
    assert replayed >= 3000  # and the dead letters made meanwhile, if it got to them
    await spool.close()
    assert check_spool(tmp_path / "s") == []
    conn = sqlite3.connect(tmp_path / "s" / "spool.db")
    counted = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    conn.close()
    assert read_stats(tmp_path / "s", GiB).events == counted > 3000
