"""Why the spool refuses, and what it does about it: a full spool or filesystem, failed writes
and the probe that notices recovery, corruption found while running, invalid input's share.

A part of `SqliteSpool` (a mixin: the same object and its writer thread's state), kept apart so
that the writer's main path reads on its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from relay.spool.api import SpoolUnavailable
from relay.spool.opening import describe as _describe
from relay.spool.opening import is_corrupt, mark_corrupt
from relay.spool.store import Store

if TYPE_CHECKING:
    from relay.spool.sqlite import _Op

log = logging.getLogger("relay.spool")

_PROBE_BYTES = 64 * 1024
_READY_FILL = 0.95  # above this share of max_bytes the relay reports not-ready
# Invalid input (dead letters from ingest) may fill this share of max_bytes and no more: past it,
# further junk is counted and not stored, so that it never makes the spool refuse valid events.
# A module constant: the configuration has no key for it (spool.invalid_share would be one).
INVALID_SHARE = 0.10
_DISK_RESERVE_SHARE = 0.02  # of the filesystem, between 1 MiB and 64 MiB, kept free for deletes


class Refusals:
    """State and decisions about refusing writes; used only by SqliteSpool."""

    directory: Path
    _store: Store
    _max_bytes: int
    _counters: tuple[int, int, int, int, int, int]
    _leased: set[int]
    _refusing: str | None
    _disk_refusing: bool
    _corrupt: str | None
    _full: str | None
    _invalid_capacity: int
    _not_kept: int
    _refusal_logged: str | None = None
    _not_kept_logging = False

    def refusing(self) -> str | None:
        if self._corrupt:
            return (
                f"the spool file is corrupt ({self._corrupt}); new events are refused. "
                "Run `relay spool check`; a restart quarantines the file (README: a corrupt spool)"
            )
        if self._refusing:
            return self._refusing
        if self._disk_refusing:
            return "the spool's filesystem is (almost) full"
        _, nbytes, _, dead_bytes, _, log_bytes = self._counters
        used = nbytes + dead_bytes + log_bytes
        if self._full or used >= _READY_FILL * self._max_bytes:
            return (
                f"spool is {100 * used / self._max_bytes:.0f}% full "
                f"({used} of {self._max_bytes} bytes)"
            )
        return None

    def _invalid_full(self, not_kept: int) -> None:
        if not self._not_kept_logging:
            self._not_kept_logging = True
            log.warning(
                "invalid input is no longer kept: dead letters from ingest fill their share "
                "of the spool (%d of %d bytes, %.0f%% of spool.max_bytes); valid events are "
                "still stored. See `relay dlq list`, then `relay dlq purge`.",
                self._counters[4],
                self._invalid_capacity,
                100 * INVALID_SHARE,
            )
        self._not_kept += not_kept

    def _disk_short(self) -> str | None:
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

    def _log_write_failure(self, exc: sqlite3.Error) -> None:
        reason = _describe(exc)
        if self._refusing != reason:
            log.error("spool write failed, refusing new events until it recovers: %s", reason)
        self._refusing = reason

    def _write_failed(self, exc: sqlite3.Error, writes: list[_Op]) -> None:
        reason = _describe(exc)
        self._log_write_failure(exc)
        for op in writes:
            if op.error is None:
                op.error = SpoolUnavailable(reason)
            if op.kind in ("release", "dead_letter"):
                # the events stay in the spool; forget the lease so they are offered again
                self._leased.difference_update(i.id for i in op.args[0])
            # a failed ack keeps its leases: delivery retries the ack instead of the events
            # being sent again
        # rescan from the start: events whose release failed lie behind the cursor
        self._rewind()
        try:
            self._store.reopen()
        except (sqlite3.Error, OSError) as reopen_exc:
            log.error("cannot reopen the spool: %s", reopen_exc)

    def _log_refusal_once(self, kind: str, message: str) -> None:
        if self._refusal_logged != kind:
            self._refusal_logged = kind
            log.warning("spool refuses new events: %s", message)

    def _probe(self) -> None:
        try:
            self._store.probe(_PROBE_BYTES)
        except sqlite3.Error as exc:
            self._check_corrupt(exc, "the write probe")
            self._refusing = _describe(exc)
            with contextlib.suppress(sqlite3.Error, OSError):
                self._store.reopen()
            return
        log.warning("spool accepts writes again")
        self._refusing = None
        self._refresh_counters()

    def _check_corrupt(self, exc: sqlite3.Error, where: str) -> None:
        if is_corrupt(exc):
            self._found_corrupt(where, _describe(exc))

    def _found_corrupt(self, where: str, detail: str) -> None:
        """Sticky until a restart: a probe that happens to write elsewhere proves nothing."""
        if self._corrupt is not None:
            return
        self._corrupt = f"{where}: {detail}"
        log.critical(
            "SPOOL CORRUPT (%s): new events are refused and the relay is not ready; what can "
            "still be read is delivered. Run `relay spool check`; the next start moves the file "
            "to quarantine, and `relay spool salvage` queues what it can read of it.",
            self._corrupt,
        )
        mark_corrupt(self.directory, self._corrupt)
