"""The SQLite spool seen from outside the relay (`relay spool`, `relay dlq`), while it runs or
not: `SqliteAdmin` implements `relay.spool.api.SpoolAdmin` over the functions here (stats, per
source, check) and in dead_letters.py and salvage.py, and turns SQLite's errors into
SpoolUnreadable.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from relay.spool.api import DeadLetterRecord, SalvageReport, SpoolStats, SpoolUnreadable
from relay.spool.sqlite import dead_letters
from relay.spool.sqlite.open import list_quarantined
from relay.spool.sqlite.salvage import SalvageError, salvage
from relay.spool.sqlite.schema import RECOUNT, SCHEMA_VERSION
from relay.spool.sqlite.sql import DB_NAME


class SqliteAdmin:
    """`relay.spool.api.SpoolAdmin` for the spool in `path`; opens the file for each call."""

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int) -> None:
        self.directory = Path(path)
        self._max_bytes = max_bytes

    async def stats(self) -> SpoolStats:
        return await self._read(read_stats, self.directory, self._max_bytes)

    async def per_source(self) -> dict[str, dict[str, int]]:
        return await self._read(per_source, self.directory)

    async def check(self) -> list[str]:
        return await asyncio.to_thread(check_spool, self.directory)

    async def list_dead_letters(self, limit: int = 1000) -> list[DeadLetterRecord]:
        return await self._change(dead_letters.list_dead_letters, limit)

    async def replay_dead_letters(
        self, ids: Sequence[int] | None, prepare: Callable[[bytes], bytes]
    ) -> tuple[list[int], dict[int, str]]:
        return await self._change(dead_letters.replay_dead_letters, ids, prepare)

    async def purge_dead_letters(self, older_than: float) -> int:
        return await self._change(dead_letters.purge_dead_letters, older_than)

    async def salvage(self, place: str) -> SalvageReport:
        folder = Path(place)
        if not folder.is_absolute() and not folder.exists():
            folder = self.directory / folder  # as `stats().set_aside` names it
        try:
            return await asyncio.to_thread(salvage, folder, self.directory)
        except SalvageError as exc:
            raise SpoolUnreadable(f"cannot salvage: {exc}") from None
        except sqlite3.Error as exc:
            raise SpoolUnreadable(
                f"cannot salvage into the spool in {self.directory}: {exc}"
            ) from None

    async def _read(self, func: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.to_thread(func, *args)
        except sqlite3.Error as exc:
            raise SpoolUnreadable(
                f"cannot read the spool in {self.directory}: {exc}; "
                "a relay started on it will quarantine the file"
            ) from None

    async def _change(self, func: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.to_thread(func, self.directory, *args)
        except FileNotFoundError as exc:
            raise SpoolUnreadable(f"{exc}; check spool.path") from None
        except sqlite3.Error as exc:
            raise SpoolUnreadable(f"cannot use the spool in {self.directory}: {exc}") from None


def read_stats(directory: str | Path, max_bytes: int) -> SpoolStats:
    """Counters of the spool in `directory`; raises sqlite3.Error when the file is unreadable."""
    directory = Path(directory)
    quarantined = list_quarantined(directory)
    db = directory / DB_NAME
    if not db.exists():
        return SpoolStats(0, 0, max_bytes, None, 0, 0, quarantined)
    # read-write so that a WAL left by a killed relay is read too; nothing is written here
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            return SpoolStats(0, 0, max_bytes, None, 0, 0, quarantined)
        events, nbytes, dead, dead_bytes = conn.execute(
            "SELECT events, event_bytes, dead_letters, dead_letter_bytes FROM stats"
        ).fetchone()
        invalid_bytes = log_bytes = 0
        if version >= 3:  # older spools gain these counters when a relay next opens them
            invalid_bytes, log_bytes = conn.execute(
                "SELECT invalid_bytes, dedup_bytes FROM stats"
            ).fetchone()
        row = conn.execute("SELECT received_at FROM events ORDER BY id LIMIT 1").fetchone()
    finally:
        conn.close()
    return SpoolStats(
        events=events,
        bytes=nbytes,
        capacity_bytes=max_bytes,
        oldest_received_at=row[0] if row else None,
        dead_letters=dead,
        dead_letter_bytes=dead_bytes,
        set_aside=quarantined,
        invalid_bytes=invalid_bytes,
        dedup_log_bytes=log_bytes,
    )


def per_source(directory: str | Path) -> dict[str, dict[str, int]]:
    """Waiting events and dead letters per source. Reads the whole queue: for the CLI only."""
    db = Path(directory) / DB_NAME
    if not db.exists():
        return {}
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        out: dict[str, dict[str, int]] = {}
        for source, n, nbytes in conn.execute(
            "SELECT source, count(*), sum(length(body)) FROM events GROUP BY source"
        ):
            out.setdefault(source, {}).update(events=n, bytes=nbytes or 0)
        for source, n in conn.execute("SELECT source, count(*) FROM dead_letters GROUP BY source"):
            out.setdefault(source, {})["dead_letters"] = n
    finally:
        conn.close()
    for numbers in out.values():
        for key in ("events", "bytes", "dead_letters"):
            numbers.setdefault(key, 0)
    return out


def check_spool(directory: str | Path) -> list[str]:
    """Problems found by SQLite's integrity check and by recounting the counters; [] when sound.

    Reads every page, so it takes time on a large spool; safe while the relay runs."""
    db = Path(directory) / DB_NAME
    if not db.exists():
        return [f"no spool at {db}"]
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        problems = [row[0] for row in conn.execute("PRAGMA integrity_check") if row[0] != "ok"]
        if problems:
            return problems
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            return [f"schema version {version}: run this relay on it once (it upgrades the spool)"]
        # one read transaction, so the recount and the counters see the same moment
        conn.execute("BEGIN")
        kept = conn.execute(
            "SELECT events, event_bytes, dead_letters, dead_letter_bytes, invalid_bytes,"
            " dedup_bytes FROM stats"
        ).fetchone()
        counted = conn.execute(RECOUNT).fetchone()
        conn.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        return [f"cannot read the spool: {exc}"]
    finally:
        conn.close()
    names = (
        "events",
        "event bytes",
        "dead letters",
        "dead-letter bytes",
        "invalid-input bytes",
        "dedup-log bytes",
    )
    return [
        f"counter of {name} says {k}, the tables hold {c}"
        for name, k, c in zip(names, kept, counted, strict=True)
        if k != c
    ]
