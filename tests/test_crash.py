"""Crash test of the ack contract: a relay SIGKILLed at random moments loses no acknowledged event.

Producers retry what was not acknowledged (as a real producer does after a timeout), so the check
is exactly once: everything acknowledged is in the spool, and nothing twice.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections import Counter
from pathlib import Path

import aiohttp
import orjson

from tests.conftest import RelayProcess, make_event

KILLS = 12


async def producer(
    relay: RelayProcess, acked: set[str], stop: asyncio.Event, rng: random.Random
) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while not stop.is_set():
            batch = [make_event() for _ in range(rng.choice((1, 1, 5, 50)))]
            if len(batch) == 1:
                body, ctype = orjson.dumps(batch[0]), "application/json"
            else:
                body = b"\n".join(orjson.dumps(e) for e in batch)
                ctype = "application/x-ndjson"
            while not stop.is_set():  # retry the same batch until it is acknowledged
                try:
                    async with session.post(
                        relay.url + "/api/status", data=body, headers={"Content-Type": ctype}
                    ) as r:
                        if r.status == 200:
                            acked.update(e["message_id"] for e in batch)
                            break
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.02)


async def test_sigkill_loses_no_acknowledged_event(tmp_path: Path) -> None:
    rng = random.Random(20261123)
    spool = tmp_path / "spool"
    relay = RelayProcess(spool).start()
    acked: set[str] = set()
    stop = asyncio.Event()
    producers = [asyncio.create_task(producer(relay, acked, stop, rng)) for _ in range(8)]
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
