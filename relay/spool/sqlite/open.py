"""Opening the spool file, and what happens to a spool found corrupt (at start or while running).

A corrupt file must never become a crash loop. Found at start-up, the file is moved to
`quarantine/<time>/` and a fresh spool is started. Found while running (SQLITE_CORRUPT in a lease
or an append, a truncated dedup-log row), the relay keeps running but refuses new events and is
not ready, and leaves a marker next to the file: the next start quarantines it, so a restart never
goes back to accepting events into a file known to be damaged. `relay spool salvage` copies what
can still be read from a quarantined file back into the queue.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from pathlib import Path

from relay.errors import UserError
from relay.spool.sqlite.health import CORRUPT_MARKER, describe, is_corrupt
from relay.spool.sqlite.schema import UnknownSchema
from relay.spool.sqlite.sql import DB_NAME, Store

log = logging.getLogger("relay.spool")

QUARANTINE_DIR = "quarantine"
_SUFFIXES = ("", "-wal", "-shm", "-journal", "-corrupt")


def open_store(directory: Path, max_page_count: int | None) -> tuple[Store, int]:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
    except OSError as exc:
        raise UserError(
            f"cannot create spool directory {directory}: {exc.strerror}; "
            "check spool.path and its permissions"
        ) from None
    lock_fd = os.open(directory / "spool.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        raise UserError(
            f"spool {directory} is in use by another relay; give each relay its own spool.path"
        ) from None
    try:
        _sync_leftovers(directory)
        return _store_or_quarantine(directory, max_page_count), lock_fd
    except BaseException:
        os.close(lock_fd)
        raise


def _sync_leftovers(directory: Path) -> None:
    """Make what a killed relay left in the page cache durable before anything is served.

    A relay killed during its fdatasync leaves WAL frames that the kernel holds but the disk may
    not. The next relay reads them, so it would answer a producer's retry "duplicates" on the
    strength of bytes a power loss would still take: sync them first (the crash test's shim
    catches the hole)."""
    for name in (DB_NAME, DB_NAME + "-wal"):
        path = directory / name
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot open %s to sync it: %s", path, exc.strerror)
            continue
        try:
            os.fsync(fd)
        except OSError as exc:
            # an unsyncable file is a disk problem; SQLite's own writes will say so next
            log.warning("cannot sync %s: %s", path, exc.strerror)
        finally:
            os.close(fd)
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _store_or_quarantine(directory: Path, max_page_count: int | None) -> Store:
    marker = directory / CORRUPT_MARKER
    if marker.exists():
        reason = "found corrupt while running"
        with contextlib.suppress(OSError):
            reason += f" ({marker.read_text(errors='replace').strip()})"
        if (directory / DB_NAME).exists():
            _quarantine(directory, reason)
        else:
            marker.unlink()
        return Store(directory, max_page_count=max_page_count)
    try:
        return Store(directory, max_page_count=max_page_count)
    except UnknownSchema as exc:
        raise UserError(f"spool {directory}: {exc}; use the relay version that wrote it") from None
    except sqlite3.Error as exc:
        if not is_corrupt(exc):
            # a full disk, an I/O error, a permission: the spool may be fine; do not touch it
            raise UserError(
                f"cannot open the spool in {directory}: {describe(exc)}; fix the cause "
                "(disk space, permissions) and start again - nothing was changed"
            ) from None
        _quarantine(directory, describe(exc))
        return Store(directory, max_page_count=max_page_count)


def _quarantine(directory: Path, reason: str) -> None:
    moved = quarantine(directory / DB_NAME)
    log.error(
        "SPOOL QUARANTINED: %s could not be read (%s); moved to %s and started a fresh "
        "spool. The events in it were not delivered: `relay spool salvage %s` queues what "
        "can still be read.",
        directory / DB_NAME,
        reason,
        moved,
        moved,
    )


def quarantine(db_path: Path) -> Path:
    """Move the database and its companion files to `quarantine/<timestamp>/`; return it."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = db_path.parent / QUARANTINE_DIR / stamp
    n = 1
    while target.exists():
        n += 1
        target = db_path.parent / QUARANTINE_DIR / f"{stamp}-{n}"
    target.mkdir(parents=True, mode=0o700)
    for suffix in _SUFFIXES:
        src = db_path.with_name(db_path.name + suffix)
        if src.exists():
            os.replace(src, target / src.name)
    _fsync_dir(db_path.parent)
    return target


def list_quarantined(directory: Path) -> list[str]:
    """Quarantined spool folders, oldest first, relative to the spool directory."""
    root = directory / QUARANTINE_DIR
    if not root.is_dir():
        return []
    return sorted(f"{QUARANTINE_DIR}/{p.name}" for p in root.iterdir() if p.is_dir())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
