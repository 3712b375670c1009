"""Corruption found while the relay runs: not ready, new events refused, never a crash loop."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from relay.spool import Incoming, SpoolUnavailable, SqliteSpool
from relay.spool.sqlite.health import CORRUPT_MARKER
from tests.helpers import RelayProcess, eventually, make_event, wait_until


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _post(url: str, event: dict) -> int:
    req = urllib.request.Request(
        url + "/api/status",
        data=orjson.dumps(event),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _corrupt_events_table(db: Path) -> None:
    """Overwrite the root page of `events` in the file, behind the running relay's back."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        # every page into the main file, so that the WAL holds no newer copy of the one we break
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        sql = "SELECT rootpage FROM sqlite_master WHERE name = 'events'"
        (root,) = conn.execute(sql).fetchone()
    finally:
        conn.close()
    fd = os.open(db, os.O_WRONLY)
    try:
        os.pwrite(fd, b"\xa5" * page_size, (root - 1) * page_size)
    finally:
        os.close(fd)
    # another writer's commit makes the relay's connection drop its page cache and read the
    # broken page from the file (as after any change by `relay dlq`)
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('poke', 1)")
    finally:
        conn.close()


@pytest.mark.e2e  # relay subprocesses
def test_corrupt_file_while_running_refuses_and_restart_quarantines(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    relay = RelayProcess(spool).start()
    try:
        for _ in range(20):
            assert _post(relay.url, make_event()) == 200
        _corrupt_events_table(spool / "spool.db")
        # the first append that touches the broken page fails; later ones are refused outright
        wait_until(
            lambda: _post(relay.url, make_event()) == 503, 20, "an append refused", relay.output
        )
        status, text = _get(relay.url + "/readyz")
        assert status == 503 and "corrupt" in text and "relay spool check" in text, text
        assert _post(relay.url, make_event()) == 503
        assert _get(relay.url + "/healthz")[0] == 200  # no restart: restarting cannot fix it
        assert relay.proc.poll() is None
        assert "SPOOL CORRUPT" in relay.output()
        assert (spool / CORRUPT_MARKER).exists()
    finally:
        code = relay.stop()
    assert code == 0, relay.output()
    # the next start does not go back to the damaged file: it is quarantined, a fresh spool
    # accepts events, and /status says where the old one is
    again = RelayProcess(spool).start()
    try:
        assert _get(again.url + "/readyz")[0] == 200
        assert _post(again.url, make_event()) == 200
        report = orjson.loads(_get(again.url + "/status")[1])
        [folder] = report["spool"]["quarantined"]
        assert (spool / folder / "spool.db").exists()
        assert (spool / folder / CORRUPT_MARKER).exists()
        assert not (spool / CORRUPT_MARKER).exists()
    finally:
        again.stop()


async def test_truncated_dedup_log_row_is_reported_not_a_dead_writer(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    spool = await SqliteSpool.open(path, max_bytes=1 << 30, dedup_window=86400.0)
    await spool.append([Incoming(b'{"n":1}', "test"), Incoming(b'{"n":2}', "test")])
    await spool.close()
    conn = sqlite3.connect(path / "spool.db", isolation_level=None)
    conn.execute("UPDATE dedup_log SET digests = substr(digests, 1, 5)")  # 5 of 16 bytes
    conn.close()

    spool = await SqliteSpool.open(path, max_bytes=1 << 30, dedup_window=86400.0)
    try:
        await eventually(lambda: spool.refusing() is not None, what="the spool refusing")
        assert "corrupt" in spool.refusing() and "dedup log row" in spool.refusing()
        assert spool.alive()  # today the writer thread died of the ValueError: a crash loop
        try:
            await spool.append([Incoming(b'{"n":3}', "test")])
        except SpoolUnavailable as exc:
            assert "corrupt" in str(exc)
        else:
            raise AssertionError("an append into a spool known to be corrupt was accepted")
        [leased] = (await spool.lease(10))[:1]  # what can be read is still delivered
        await spool.ack([leased.id])
        assert spool.stats().corrupt is not None
    finally:
        await spool.close()
    assert (path / CORRUPT_MARKER).read_text().startswith("the dedup log")


async def test_corruption_found_by_a_lease_turns_the_spool_not_ready(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    spool = await SqliteSpool.open(path, max_bytes=1 << 30, dedup_window=0)
    try:
        await spool.append([Incoming(b'{"n":%d}' % i, "test") for i in range(20)])
        await asyncio.to_thread(_corrupt_events_table, path / "spool.db")
        with pytest.raises(SpoolUnavailable, match="malformed"):
            await spool.lease(10)
        await eventually(lambda: spool.refusing() is not None, what="the spool refusing")
        assert spool.refusing().startswith("the spool file is corrupt (a lease:")
        assert spool.alive()
        try:
            await spool.append([Incoming(b'{"n":99}', "test")])
        except SpoolUnavailable as exc:
            assert "corrupt" in str(exc)
        else:
            raise AssertionError("an append into a spool known to be corrupt was accepted")
    finally:
        await spool.close()
    assert (path / CORRUPT_MARKER).exists()


def _first_leaf(db: Path, table: str) -> tuple[int, int]:
    """(page number, page size) of the leftmost leaf of `table`'s B-tree, read from the file
    itself (SQLite's dbstat table is not in every build)."""
    conn = sqlite3.connect(db)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    sql = "SELECT rootpage FROM sqlite_master WHERE name = ?"
    (page,) = conn.execute(sql, (table,)).fetchone()
    conn.close()
    data = db.read_bytes()
    while True:
        start = (page - 1) * page_size
        header = start + (100 if page == 1 else 0)
        kind = data[header]
        if kind == 0x0D:  # a table leaf
            return page, page_size
        assert kind == 0x05, f"page {page} is not a table B-tree page"
        first_cell = int.from_bytes(data[header + 12 : header + 14], "big")
        page = int.from_bytes(data[start + first_cell : start + first_cell + 4], "big")


async def test_salvage_queues_what_a_quarantined_spool_still_holds(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    from relay.cli import main
    from relay.spool import Reject, check_spool

    path = tmp_path / "spool"
    bodies = [orjson.dumps({"n": i, "pad": "x" * 200}) for i in range(300)]
    spool = await SqliteSpool.open(path, max_bytes=1 << 30, dedup_window=0)
    await spool.append([Incoming(b, "test") for b in bodies], [Reject("junk", "not JSON", "test")])
    await spool.close()  # checkpointed: every page is in the main file
    page, page_size = _first_leaf(path / "spool.db", "events")
    with open(path / "spool.db", "r+b") as f:
        f.seek((page - 1) * page_size)
        f.write(b"\xa5" * page_size)

    # the start-up check reads the oldest event: the file is quarantined, a fresh spool starts
    spool = await SqliteSpool.open(path, max_bytes=1 << 30, dedup_window=0)
    [folder] = spool.stats().set_aside
    assert spool.stats().events == 0
    await spool.close()

    monkeypatch.setenv("RELAY_SPOOL__PATH", str(path))
    # the command runs its own event loop, as it does from a shell
    assert await asyncio.to_thread(main, ["spool", "salvage", folder]) == 0
    out, err = capsys.readouterr()
    conn = sqlite3.connect(path / "spool.db")
    salvaged = [row[0] for row in conn.execute("SELECT body FROM events ORDER BY id")]
    dead = conn.execute("SELECT body FROM dead_letters").fetchall()
    conn.close()
    # the broken page cost the events on it, and only those; order is kept
    assert 0 < len(salvaged) < len(bodies)
    assert salvaged == bodies[len(bodies) - len(salvaged) :]
    assert dead == [(b"junk",)]
    assert f"salvaged {len(salvaged)} event(s) and 1 dead letter(s)" in out
    assert "events: ids 1-" in err
    assert check_spool(path) == []  # the counters match what was queued
    # twice would queue every event twice
    assert await asyncio.to_thread(main, ["spool", "salvage", folder]) == 2
    assert "salvaged already" in capsys.readouterr().err
