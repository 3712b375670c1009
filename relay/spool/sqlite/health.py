"""Why the SQLite spool refuses new events, and what it does about it: a full spool or
filesystem (with a reserve kept for deletes), failed writes and the probe that notices recovery,
corruption found while running (sticky, with a marker for the next start), invalid input's share,
and logging each refusal once.

Its state is changed only from the writer thread; the event loop reads `refusing()`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from pathlib import Path

from relay.spool.api import INVALID_SHARE, fill_refusal
from relay.spool.sqlite.sql import Store

log = logging.getLogger("relay.spool")

CORRUPT_MARKER = "spool.db-corrupt"  # written when corruption is found while running
_PROBE_BYTES = 64 * 1024
_DISK_RESERVE_SHARE = 0.02  # of the filesystem, between 1 MiB and 64 MiB, kept free for deletes
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


class Health:
    """Refusal state and decisions of one spool."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.invalid_capacity = int(max_bytes * INVALID_SHARE)
        self.failing: str | None = None  # a write failed: refused until a probe or append works
        self.corrupt: str | None = None  # found corrupt while running: sticky (see open.py)
        # why the last append was refused for want of room, until space is freed or one fits:
        # an event too big for what is left makes the relay not-ready below the fill mark too
        self.full: str | None = None
        self.not_kept = 0  # invalid items not stored because their share was full
        self._disk_refusing = False
        self._refusal_logged: str | None = None
        self._not_kept_logging = False

    def refusing(self, used: int) -> str | None:
        """Why new events are refused (not-ready) with `used` bytes of the spool taken."""
        if self.corrupt:
            return (
                f"the spool file is corrupt ({self.corrupt}); new events are refused. "
                "Run `relay spool check`; a restart quarantines the file (README: a corrupt spool)"
            )
        if self.failing:
            return self.failing
        if self._disk_refusing:
            return "the spool's filesystem is (almost) full"
        return fill_refusal(used, self.max_bytes, bool(self.full))

    def disk_short(self) -> str | None:
        """Why the filesystem is too full for new events, or None. A reserve is kept free so
        that acks and deletes, which free space, can always be written."""
        try:
            fs = os.statvfs(self.directory)
        except OSError:
            return None
        free = fs.f_bavail * fs.f_frsize
        reserve = min(max(fs.f_blocks * fs.f_frsize * _DISK_RESERVE_SHARE, 1 << 20), 64 << 20)
        if free >= reserve:
            self._disk_refusing = False
            return None
        self._disk_refusing = True
        return (
            f"the spool's filesystem has {free >> 10} KiB free, less than the "
            f"{int(reserve) >> 10} KiB kept for acknowledgements; free disk space"
        )

    def refused(self, kind: str, message: str) -> None:
        """An append was refused (`kind`: "full" or "disk"): logged once until one is stored."""
        if kind == "full":
            self.full = message
        if self._refusal_logged != kind:
            self._refusal_logged = kind
            log.warning("spool refuses new events: %s", message)

    def write_failed(self, exc: sqlite3.Error) -> str:
        """A commit failed: refuse new events until the probe or an append succeeds."""
        reason = describe(exc)
        if self.failing != reason:
            log.error("spool write failed, refusing new events until it recovers: %s", reason)
        self.failing = reason
        return reason

    def committed(self, stored: bool, refused: bool, freed: bool, kept_invalid: bool) -> None:
        """After a commit: `stored` events, `refused` an append, `freed` room (acks), and
        `kept_invalid` rejects."""
        # only stored events prove that new ones can be stored (acks need no new space)
        if self.failing and stored:
            log.warning("spool accepts writes again")
            self.failing = None
        if not refused:
            self._refusal_logged = None
        if self.full and (freed or stored):
            self.full = None  # room was freed, or an append fitted: worth trying again
        if kept_invalid:
            self._not_kept_logging = False  # invalid input is kept again: log the next refusal

    def room_freed(self) -> None:
        self.full = None  # e.g. `relay dlq purge` freed room from outside

    def invalid_full(self, not_kept: int, invalid_bytes: int) -> None:
        if not self._not_kept_logging:
            self._not_kept_logging = True
            log.warning(
                "invalid input is no longer kept: dead letters from ingest fill their share "
                "of the spool (%d of %d bytes, %.0f%% of spool.max_bytes); valid events are "
                "still stored. See `relay dlq list`, then `relay dlq purge`.",
                invalid_bytes,
                self.invalid_capacity,
                100 * INVALID_SHARE,
            )
        self.not_kept += not_kept

    def probe(self, store: Store) -> bool:
        """While failing: write and fsync scratch data; True once that works again."""
        try:
            store.probe(_PROBE_BYTES)
        except sqlite3.Error as exc:
            self.check_corrupt(exc, "the write probe")
            self.failing = describe(exc)
            with contextlib.suppress(sqlite3.Error, OSError):
                store.reopen()
            return False
        log.warning("spool accepts writes again")
        self.failing = None
        return True

    def check_corrupt(self, exc: sqlite3.Error, where: str) -> None:
        if is_corrupt(exc):
            self.found_corrupt(where, describe(exc))

    def found_corrupt(self, where: str, detail: str) -> None:
        """Sticky until a restart: a probe that happens to write elsewhere proves nothing."""
        if self.corrupt is not None:
            return
        self.corrupt = f"{where}: {detail}"
        log.critical(
            "SPOOL CORRUPT (%s): new events are refused and the relay is not ready; what can "
            "still be read is delivered. Run `relay spool check`; the next start moves the file "
            "to quarantine, and `relay spool salvage` queues what it can read of it.",
            self.corrupt,
        )
        mark_corrupt(self.directory, self.corrupt)
