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
from pathlib import Path

from relay.errors import UserError
from relay.spool.quarantine import CORRUPT_MARKER, quarantine
from relay.spool.store import DB_NAME, Store, UnknownSchema

log = logging.getLogger("relay.spool")

# SQLITE_CORRUPT and SQLITE_NOTADB: the file is unreadable, not merely unreachable right now
_CORRUPT = {11, 26}


def describe(exc: sqlite3.Error) -> str:
    name = getattr(exc, "sqlite_errorname", None)
    return f"{exc} ({name})" if name else str(exc)


def is_corrupt(exc: BaseException) -> bool:
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _CORRUPT


def mark_corrupt(directory: Path, reason: str) -> None:
    """Leave the reason next to the file, durably, for the next start (and the operator)."""
    marker = directory / CORRUPT_MARKER
    try:
        fd = os.open(marker, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        try:
            os.write(fd, reason.encode("utf-8", "replace") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        log.error("cannot write %s: %s", marker, exc.strerror)


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
