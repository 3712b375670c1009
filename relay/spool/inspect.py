"""Reading a spool from outside the relay (the `relay spool` commands), while it runs or not."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from relay.spool.quarantine import list_quarantined
from relay.spool.store import DB_NAME
from relay.spool.types import SpoolStats


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
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            return SpoolStats(0, 0, max_bytes, None, 0, 0, quarantined)
        events, nbytes, dead, dead_bytes = conn.execute(
            "SELECT events, event_bytes, dead_letters, dead_letter_bytes FROM stats"
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
        quarantined=quarantined,
    )
