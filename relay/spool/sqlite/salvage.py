"""`relay spool salvage`: queue again what can still be read of a quarantined (corrupt) spool.

Rows are read by id range; a range that SQLite cannot read is halved until the unreadable ids are
isolated, so one broken page costs the rows on it and no more. Events go back into the live
spool's queue (with their original `received_at`), dead letters into its dead-letter table, in
short transactions like `relay dlq replay`: the relay may run meanwhile and picks them up. The
dedup log is not copied, so a producer's retry of a salvaged event may be stored twice; events
whose acknowledgement was lost with the damage may be delivered twice. Nothing is lost.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

from relay.spool.api import SalvageReport
from relay.spool.sqlite.schema import SCHEMA_VERSION
from relay.spool.sqlite.sql import DB_NAME

SALVAGED_MARKER = "salvaged"  # written into the quarantine folder once its rows were queued
_CHUNK = 1000
# single ids that may fail to read before the rest of a table is given up: with a broken root page
# every query fails, and without bounds the ids could span 2**40 (at ~10 us a query: 10 s)
_MAX_FAILED_IDS = 1_000_000
_EVENT_COLS = "id, body, source, received_at"
_DEAD_COLS = (
    "id, event_id, body, source, reason, attempts, first_error, last_error, received_at,"
    " first_attempt_at, dead_at"
)


class SalvageError(Exception):
    """The salvage cannot start (one line for the operator)."""


def salvage(folder: Path, spool_dir: Path) -> SalvageReport:
    source = folder / DB_NAME
    if not source.exists():
        raise SalvageError(f"no {DB_NAME} in {folder}")
    if (folder / SALVAGED_MARKER).exists():
        raise SalvageError(
            f"{folder} was salvaged already; doing it again would queue its events twice"
        )
    target = spool_dir / DB_NAME
    if not target.exists():
        raise SalvageError(f"no spool at {target}; start the relay once, then salvage")
    if target.resolve() == source.resolve():
        raise SalvageError("that is the live spool; salvage a quarantined copy")
    src = sqlite3.connect(source, isolation_level=None)
    dst = sqlite3.connect(target, isolation_level=None)
    report = SalvageReport()
    try:
        try:
            src.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            raise SalvageError(
                f"{source} cannot be read at all ({exc}); nothing to salvage"
            ) from None
        dst.execute("PRAGMA busy_timeout=10000")
        dst.execute("PRAGMA synchronous=FULL")
        version = dst.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise SalvageError(
                f"the spool at {target} has schema version {version}, this relay writes "
                f"{SCHEMA_VERSION}; run this relay on it once, then salvage"
            )
        for rows in _readable(src, "events", _EVENT_COLS, report):
            _queue_events(dst, rows)
            report.events += len(rows)
        for rows in _readable(src, "dead_letters", _DEAD_COLS, report):
            _queue_dead_letters(dst, rows)
            report.dead_letters += len(rows)
    finally:
        src.close()
        dst.close()
    (folder / SALVAGED_MARKER).write_text(
        f"{report.events} events, {report.dead_letters} dead letters queued into {target}\n"
    )
    return report


def _bounds(conn: sqlite3.Connection, table: str) -> tuple[int, int]:
    for sql in (
        f"SELECT min(id), max(id) FROM {table}",
        # the max id ever handed out; from 1, since the minimum is unknown
        "SELECT 1, seq FROM sqlite_sequence WHERE name = ?",
    ):
        try:
            row = conn.execute(sql, (table,) if "?" in sql else ()).fetchone()
        except sqlite3.DatabaseError:
            continue
        if row is None or row[0] is None:
            return 1, 0
        return row[0], row[1]
    return 1, 1 << 40  # nothing tells where the ids end: ranges that hold none cost one query


def _readable(
    conn: sqlite3.Connection, table: str, cols: str, report: SalvageReport
) -> Iterator[list[tuple]]:
    lo, hi = _bounds(conn, table)
    stack = [(lo, hi)] if lo <= hi else []
    sql = f"SELECT {cols} FROM {table} WHERE id BETWEEN ? AND ? ORDER BY id LIMIT {_CHUNK}"
    failed = 0
    while stack:
        lo, hi = stack.pop()
        if failed >= _MAX_FAILED_IDS:
            _lost(report, table, lo, hi)
            continue
        try:
            rows = conn.execute(sql, (lo, hi)).fetchall()
        except sqlite3.DatabaseError:
            if lo == hi:
                failed += 1
                _lost(report, table, lo, hi)
            else:
                mid = (lo + hi) // 2
                stack += [(mid + 1, hi), (lo, mid)]  # lower half first: ids stay in order
            continue
        if rows:
            yield rows
        if len(rows) == _CHUNK:
            stack.append((rows[-1][0] + 1, hi))


def _lost(report: SalvageReport, table: str, lo: int, hi: int) -> None:
    last = report.unreadable[-1] if report.unreadable else None
    if last is not None and last[0] == table and last[2] == lo - 1:
        report.unreadable[-1] = (table, last[1], hi)
    else:
        report.unreadable.append((table, lo, hi))


def _queue_events(dst: sqlite3.Connection, rows: list[tuple]) -> None:
    dst.execute("BEGIN IMMEDIATE")
    try:
        dst.executemany(
            "INSERT INTO events (body, source, received_at) VALUES (?, ?, ?)",
            [row[1:] for row in rows],
        )
        # events are counted by their writers, not by triggers (see schema.py)
        nbytes = sum(len(row[1]) for row in rows)
        dst.execute(
            "UPDATE stats SET events = events + ?, event_bytes = event_bytes + ?",
            (len(rows), nbytes),
        )
        dst.execute("COMMIT")
    except BaseException:
        if dst.in_transaction:
            dst.execute("ROLLBACK")
        raise


def _queue_dead_letters(dst: sqlite3.Connection, rows: list[tuple]) -> None:
    dst.execute("BEGIN IMMEDIATE")
    try:
        cols = _DEAD_COLS.split(", ", 1)[1]
        marks = ", ".join("?" * len(cols.split(",")))
        dst.executemany(
            f"INSERT INTO dead_letters ({cols}) VALUES ({marks})", [row[1:] for row in rows]
        )
        dst.execute("COMMIT")
    except BaseException:
        if dst.in_transaction:
            dst.execute("ROLLBACK")
        raise
