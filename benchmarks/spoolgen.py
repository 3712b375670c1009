"""Preparing data: a spool holding a backlog, written with the relay's own spool API.

Much faster than posting the events through HTTP, and the bodies are exactly what the relay
stores for the same events (normalised), so delivery sends what it would have sent anyway.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from benchmarks.events import message_id, stored_template
from relay.spool import Incoming, SqliteSpool

_CHUNK = 20_000


async def _fill(path: Path, count: int, run: str) -> None:
    # with the default dedup window, as if the backlog had come in through a source: the relay
    # then also reads back (and holds) a digest of every event at start-up
    spool = await SqliteSpool.open(path, max_bytes=1 << 40, dedup_window=86400.0)
    t = stored_template()
    try:
        for start in range(0, count, _CHUNK):
            stop = min(count, start + _CHUNK)
            await spool.append(
                [Incoming(t.body(message_id(run, 1, n)), "bench") for n in range(start, stop)]
            )
    finally:
        await spool.close()


def build_spool(path: Path, count: int, run: str) -> Path:
    """A spool folder at `path` with `count` events waiting (0: an empty spool)."""
    asyncio.run(_fill(path, count, run))
    return path


def copy_spool(source: Path, target: Path) -> Path:
    """A copy of a prepared spool (without its lock file), so each round starts the same."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("spool.lock"))
    return target
