"""Crash test of the ack contract: a relay SIGKILLed at random moments loses no acknowledged event.

Producers retry what was not acknowledged (as a real producer does after a timeout), so the check
is exactly once: everything acknowledged is in the spool, and nothing twice.

SIGKILL keeps the page cache, so that check alone would pass with `PRAGMA synchronous=OFF`. The
relay therefore runs with an fsync-recording shim preloaded (tests/fsync_trace.py), and every 200
must have a completed fsync of the spool between its request and its answer. The checker is shown
to catch a relay that acknowledges before fsync: the same shim, told to make fsync a no-op.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections import Counter
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.e2e.fsync_trace import (
    Ack,
    Sync,
    build_shim,
    duplicate_only,
    ordering_violations,
    read_trace,
    shim_env,
)
from tests.helpers import RelayProcess, eventually, make_event

pytestmark = pytest.mark.e2e

KILLS = 12


@pytest.fixture(scope="module")
def fsync_shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    shim, why_not = build_shim(tmp_path_factory.mktemp("shim"))
    if shim is None:
        pytest.skip(why_not)
    return shim


async def producer(
    relay: RelayProcess,
    acked: set[str],
    stop: asyncio.Event,
    rng: random.Random,
    windows: list[Ack] | None = None,
) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while not stop.is_set():
            batch = [make_event() for _ in range(rng.choice((1, 1, 5, 50)))]
            if len(batch) == 1:
                body, ctype = orjson.dumps(batch[0]), "application/json"
            else:
                body = b"\n".join(orjson.dumps(e) for e in batch)
                ctype = "application/x-ndjson"
            first_sent = time.monotonic()  # the shim's CLOCK_MONOTONIC
            attempts = 0
            while not stop.is_set():  # retry the same batch until it is acknowledged
                attempts += 1
                try:
                    sent = time.monotonic()
                    async with session.post(
                        relay.url + "/api/status", data=body, headers={"Content-Type": ctype}
                    ) as r:
                        if r.status == 200:
                            answered = time.monotonic()
                            raw = await r.read()
                            acked.update(e["message_id"] for e in batch)
                            if windows is not None:
                                windows.append(
                                    ack_window(batch, raw, first_sent, sent, answered, attempts)
                                )
                            break
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.02)


def ack_window(
    batch: list[dict], raw: bytes, first_sent: float, sent: float, answered: float, attempts: int
) -> Ack:
    """The window in which a sync must vouch for this 200: from this attempt's send when the
    relay stored something new; from the first send when it had it all already (the write then
    came from an earlier attempt, to a process that may since have been killed)."""
    dup = duplicate_only(raw)
    return Ack(
        sent=first_sent if dup else sent,
        answered=answered,
        what=batch[0]["message_id"],
        attempts=attempts,
        answer=raw[:80].decode(errors="replace"),
        duplicate_only=dup,
    )


async def test_sigkill_loses_no_acknowledged_event(tmp_path: Path, fsync_shim: Path) -> None:
    rng = random.Random(20261123)
    spool = tmp_path / "spool"
    trace = tmp_path / "fsync.trace"
    relay = RelayProcess(spool, env=shim_env(fsync_shim, trace)).start()
    acked: set[str] = set()
    windows: list[Ack] = []
    stop = asyncio.Event()
    producers = [asyncio.create_task(producer(relay, acked, stop, rng, windows)) for _ in range(8)]
    try:
        for _ in range(KILLS):
            await asyncio.sleep(rng.uniform(0.2, 0.8))
            relay.kill()
            await asyncio.to_thread(relay.start)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(*producers, return_exceptions=True)
        relay.kill()

    assert len(acked) > 200, "the producers hardly got anything acknowledged"
    conn = sqlite3.connect(spool / "spool.db")
    stored = Counter(
        orjson.loads(body)["message_id"] for (body,) in conn.execute("SELECT body FROM events")
    )
    counters = conn.execute("SELECT events FROM stats").fetchone()[0]
    conn.close()
    missing = acked - set(stored)
    twice = [m for m, n in stored.items() if n > 1]
    assert not missing, f"{len(missing)} acknowledged events lost"
    assert not twice, f"{len(twice)} events stored twice"
    assert counters == sum(stored.values())

    # and every one of those 200s was given after an fsync that followed its request
    loaded, syncs = read_trace(trace)
    assert len([line for line in loaded if line.endswith(" real")]) >= KILLS + 1, loaded
    assert len(windows) == len({w.what for w in windows}) > 50
    # A retry answered "duplicates" by a restarted relay stores nothing new: it vouches for what
    # the killed process wrote, which the spool syncs at open; its window starts at first send.
    assert len([w for w in windows if not w.duplicate_only]) > 50
    late = ordering_violations(windows, syncs, spool)
    assert not late, f"{len(late)} of {len(windows)} answers came before fsync: {late[:3]}"


async def test_checker_catches_a_relay_that_acks_before_fsync(
    tmp_path: Path, fsync_shim: Path
) -> None:
    """The same relay with fsync made a no-op (as with synchronous=OFF): every 200 is flagged."""
    spool = tmp_path / "spool"
    trace = tmp_path / "fsync.trace"
    relay = RelayProcess(spool, env=shim_env(fsync_shim, trace, noop=True)).start()
    acked: set[str] = set()
    windows: list[Ack] = []
    stop = asyncio.Event()
    task = asyncio.create_task(producer(relay, acked, stop, random.Random(7), windows))
    try:
        await eventually(
            lambda: len(windows) >= 20 or task.done(), 30, "20 acknowledged requests", relay.output
        )
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        relay.kill()
    assert len(windows) >= 20, "the relay hardly acknowledged anything"
    loaded, _ = read_trace(trace)
    assert any(line.endswith(" noop") for line in loaded), "the shim was not loaded"
    assert len(ordering_violations(windows, read_trace(trace)[1], spool)) == len(windows)


async def post_once(relay: RelayProcess, body: bytes, timeout: float) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
        session.post(
            relay.url + "/api/status", data=body, headers={"Content-Type": "application/x-ndjson"}
        ) as r,
    ):
        return r.status, await r.read()


async def test_duplicate_answer_after_restart_is_durable(tmp_path: Path, fsync_shim: Path) -> None:
    spool = tmp_path / "spool"
    trace = tmp_path / "fsync.trace"
    hang = tmp_path / "hang"
    relay = RelayProcess(spool, env={**shim_env(fsync_shim, trace), "FSYNC_SHIM_HANG": str(hang)})
    relay.start()
    batch = [make_event() for _ in range(5)]
    body = b"\n".join(orjson.dumps(e) for e in batch)
    hang.touch()  # from now on the disk never confirms a write
    first_sent = time.monotonic()
    try:
        # the write reaches the page cache, its fdatasync never returns: no 200 may come
        with pytest.raises(TimeoutError):
            await post_once(relay, body, timeout=2)
    finally:
        relay.kill()
    hang.unlink()
    relay.start()  # a new process, the same files, the frames still in the page cache
    try:
        status, answer = await post_once(relay, body, timeout=10)
        answered = time.monotonic()
    finally:
        relay.kill()
    assert status == 200
    ack = Ack(first_sent, answered, batch[0]["message_id"], 2, answer.decode(), True)
    late = ordering_violations([ack], read_trace(trace)[1], spool)
    assert not late, late


def test_checker_ordering_rules(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    wal = str(spool.resolve() / "spool.db-wal")
    ack = Ack(sent=10.0, answered=11.0, what="m")

    def check(*syncs: Sync) -> bool:
        return not ordering_violations([ack], list(syncs), spool)

    assert check(Sync("fdatasync", 10.2, 10.4, 0, wal))
    assert check(Sync("fsync", 10.0, 11.0, 0, wal))  # the window's very edges count
    assert not check()
    assert not check(Sync("fdatasync", 9.5, 10.4, 0, wal))  # started before the request
    assert not check(Sync("fdatasync", 10.5, 11.2, 0, wal))  # finished after the answer
    assert not check(Sync("fdatasync", 10.2, 10.4, -1, wal))  # failed
    assert not check(Sync("fdatasync", 10.2, 10.4, 0, "/var/log/other.log"))  # not the spool
    assert not check(Sync("sync_file_range", 10.2, 10.4, 0, wal))  # no durability promise
    # one late sync must not hide behind an early one that does not fit either
    assert check(Sync("fsync", 9.0, 12.0, 0, wal), Sync("fsync", 10.1, 10.9, 0, wal))
