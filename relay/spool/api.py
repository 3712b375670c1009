"""The spool as a contract: what sources, delivery and the `relay spool`/`relay dlq` commands may
ask of any backend, the values they exchange, its errors, and the registry that picks a backend
from `spool.backend`.

Nothing outside `relay.spool` knows which backend runs, so that a replicated one (NATS JetStream,
say) can implement the same protocols for deployments that outgrow one host. Every backend passes
`tests/spool/test_contract.py`.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from relay.errors import ConfigError

# -- errors ---------------------------------------------------------------------------------------


class SpoolError(Exception):
    """Anything the spool cannot do; its text is one line for the operator or producer."""


class SpoolRefused(SpoolError):
    """The spool did not store the events; the producer must not be told they were accepted."""

    retry_after: int = 5


class SpoolFull(SpoolRefused):
    """Storing the events would exceed `spool.max_bytes`; old events are never dropped for new."""


class SpoolUnavailable(SpoolRefused):
    """The write failed (disk full, I/O error, failed fsync); nothing of it was committed."""


class SpoolUnreadable(SpoolError):
    """An admin command cannot read or change the spool (missing, damaged, another version)."""


# -- values ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Incoming:
    """One valid, normalised event to store: its canonical bytes and the source it came from."""

    body: bytes
    source: str


@dataclass(frozen=True, slots=True)
class Reject:
    """Input that is not a valid event, kept in the dead-letter table so nothing sent is lost.

    `raw` and `error` must already be scrubbed of personal numbers.
    """

    raw: str
    error: str
    source: str
    reason: str = "invalid"


@dataclass(frozen=True, slots=True)
class AppendResult:
    accepted: int
    duplicates: int
    dead_lettered: int
    # Rejects not stored because invalid input fills its share of the spool (NOT_KEPT): always
    # the last `not_kept` of the call's `rejects`, in order. The call's valid events are stored
    # all the same; the source tells the producer that these items were neither stored nor kept.
    not_kept: int = 0


# Results are frozen, so the common ones (one event per request: accepted, or a duplicate)
# are built once and shared instead of once per request.
_RESULTS: dict[tuple[int, int, int, int], AppendResult] = {}


def append_result(
    accepted: int, duplicates: int, dead_lettered: int, not_kept: int = 0
) -> AppendResult:
    key = (accepted, duplicates, dead_lettered, not_kept)
    result = _RESULTS.get(key)
    if result is None:
        result = AppendResult(accepted, duplicates, dead_lettered, not_kept)
        if accepted + duplicates + dead_lettered + not_kept <= 1:
            _RESULTS[key] = result
    return result


NOT_KEPT = (
    "not kept: invalid input fills its share of the spool (10% of spool.max_bytes); "
    "fix the producer, or see `relay dlq list` and `relay dlq purge`"
)

# Invalid input (dead letters from ingest) may fill this share of max_bytes and no more: past it,
# further junk is counted and not stored, so that it never makes the spool refuse valid events.
# A constant: the configuration has no key for it (spool.invalid_share would be one).
INVALID_SHARE = 0.10
READY_FILL = 0.95  # above this share of max_bytes the relay reports not-ready
# what a stored row costs beyond its variable-length values (SQLite: the integer and real
# columns, the record header, the cell pointer and B-tree slack). An estimate, the same everywhere.
ROW_OVERHEAD = 64
MAX_DELAY = 7 * 86400.0  # no event is put off further than this, whatever a caller asks


def fill_refusal(used: int, max_bytes: int, full: bool) -> str | None:
    """Why a spool holding `used` bytes refuses for want of room (`full`: a write was just
    refused for it), or None: every backend says it the same way."""
    if full or used >= READY_FILL * max_bytes:
        return f"spool is {100 * used / max_bytes:.0f}% full ({used} of {max_bytes} bytes)"
    return None


def bounded_delay(delay: float) -> float:
    """A release's delay as stored: an infinite (or NaN) one would hide the event forever."""
    if not math.isfinite(delay):
        return MAX_DELAY
    return min(max(delay, 1e-6), MAX_DELAY)


def dead_letter_size(body: bytes, source: str, reason: str, first: str, last: str) -> int:
    """What a dead letter counts against `spool.max_bytes`: what it really stores, so that a
    flood of one-byte junk lines cannot fill the disk while counting for almost nothing."""
    return (
        len(body)
        + len(source.encode())
        + len(reason.encode())
        + len(first.encode())
        + len(last.encode())
        + ROW_OVERHEAD
    )


def keep_rejects(
    rejects: Sequence[Reject], room: int
) -> tuple[list[tuple[bytes, Reject]], int, int]:
    """The first of `rejects` that fit in `room` bytes, in order: ([(raw bytes, reject)], their
    bytes, how many are not kept)."""
    kept: list[tuple[bytes, Reject]] = []
    total = 0
    for r in rejects:
        raw = r.raw.encode("utf-8", "replace")
        size = dead_letter_size(raw, r.source, r.reason, r.error, r.error)
        if total + size > room:
            return kept, total, len(rejects) - len(kept)
        total += size
        kept.append((raw, r))
    return kept, total, 0


class Leased(NamedTuple):
    """An event handed to delivery; it stays in the spool until acked, released or dead-lettered.

    A NamedTuple, so that a backend builds one per row cheaply (`Leased._make(row)`)."""

    id: int
    body: bytes
    source: str
    received_at: float
    attempts: int
    rejections: int


@dataclass(frozen=True, slots=True)
class Release:
    """Give a leased event back: retry it no earlier than `delay` seconds from now."""

    id: int
    delay: float
    error: str
    rejected: bool = False  # the upstream refused this event (counts toward max_rejections)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Move a leased event to the dead-letter table."""

    id: int
    reason: str
    error: str


@dataclass(frozen=True, slots=True)
class SpoolStats:
    events: int
    bytes: int
    capacity_bytes: int
    oldest_received_at: float | None
    dead_letters: int
    dead_letter_bytes: int
    # Stores the backend set aside as unreadable, for `relay spool salvage` (SQLite: the
    # quarantine folders, "quarantine/<time>"); a backend that never sets any aside has none.
    set_aside: list[str] = field(default_factory=list)
    refusing: str | None = None  # why writes are refused right now, or None
    corrupt: str | None = None  # where corruption was found while running, or None
    invalid_bytes: int = 0  # of dead_letter_bytes: invalid input kept at ingest
    invalid_capacity_bytes: int = 0  # its share of capacity_bytes
    invalid_not_kept: int = 0  # invalid items not stored since start: their share was full
    dedup_log_bytes: int = 0  # the duplicate-detection log, also counted against capacity


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    id: int
    event_id: int | None  # None: invalid input kept at ingest, never an event
    reason: str
    source: str
    attempts: int
    first_error: str | None
    last_error: str | None
    received_at: float
    first_attempt_at: float | None
    dead_at: float
    body: bytes


@dataclass
class SalvageReport:
    events: int = 0
    dead_letters: int = 0
    # (table, first id, last id): ids in these ranges could not be read (or never existed)
    unreadable: list[tuple[str, int, int]] = field(default_factory=list)


# -- protocols ------------------------------------------------------------------------------------


class Spool(Protocol):
    """The hot path: sources append, delivery leases and settles."""

    async def append(
        self, events: Sequence[Incoming], rejects: Sequence[Reject] = ()
    ) -> AppendResult:
        """Store events durably; return only once they would survive a crash (SQLite: after
        the commit holding them is fsynced).

        Raises SpoolRefused (and stores nothing of this call) when the events cannot be stored.
        Rejects that do not fit in invalid input's share are not stored and do not make the
        call fail: they are counted in the result's `not_kept`.
        """

    async def lease(self, limit: int, wait: float = 0.0) -> list[Leased]:
        """The oldest events ready for delivery that are not already leased: events due for a
        retry first, then new ones in the order they were stored.

        When none is ready, waits up to `wait` seconds for one (an append, or a release
        coming due) and returns what is ready then, possibly nothing. A cancellation while
        waiting always propagates."""

    async def ack(self, ids: Sequence[int]) -> None:
        """Delivered: delete these events."""

    async def release(self, items: Sequence[Release]) -> None:
        """Not delivered this time: give them back with a not-before time and the error."""

    async def dead_letter(self, items: Sequence[DeadLetter]) -> None:
        """Permanently refused: move them to the dead-letter table."""

    def stats(self) -> SpoolStats:
        """Cheap, from memory: safe to call on every scrape."""

    def refusing(self) -> str | None:
        """Why the spool refuses writes right now (not-ready), or None."""

    def alive(self) -> bool:
        """False when the spool can no longer work at all (the relay should be restarted)."""

    async def close(self) -> None: ...


class SpoolAdmin(Protocol):
    """What `relay spool` and `relay dlq` need; works while a relay runs on the same spool.

    Each method raises SpoolUnreadable (one line) when the spool cannot be read or changed."""

    async def stats(self) -> SpoolStats:
        """The counters, as the running relay would report them (without its live state)."""

    async def per_source(self) -> dict[str, dict[str, int]]:
        """Waiting events and dead letters per source: {source: {events, bytes, dead_letters}}."""

    async def check(self) -> list[str]:
        """Problems found by a full consistency check; [] when sound. May read everything."""

    async def list_dead_letters(self, limit: int = 1000) -> list[DeadLetterRecord]:
        """The oldest dead letters first."""

    async def replay_dead_letters(
        self, ids: Sequence[int] | None, prepare: Callable[[bytes], bytes]
    ) -> tuple[list[int], dict[int, str]]:
        """Move dead letters back into the queue as new events (all of them when `ids` is None).

        `prepare` turns a stored body into the body to queue, or raises ValueError when it
        cannot be sent; those stay dead letters. Returns the replayed ids and, per id left in
        place, why."""

    async def purge_dead_letters(self, older_than: float) -> int:
        """Delete dead letters dead for more than `older_than` seconds; returns how many."""

    async def salvage(self, place: str) -> SalvageReport:
        """Queue again what can be read of a store set aside as unreadable (`stats().set_aside`,
        or a path). Raises SpoolUnreadable when there is nothing to salvage there."""


# -- the backend registry -------------------------------------------------------------------------


class Backend(NamedTuple):
    """Where a backend's classes live, as "module:attribute" strings imported only when chosen.

    `spool` has `async open(path, *, max_bytes, dedup_window, on_commit=None, options=None)
    -> Spool`; `admin`, when the backend keeps anything outside the relay process, is built as
    `admin(path, *, max_bytes, options=None) -> SpoolAdmin`. `options` is the backend's own
    settings (for "jetstream": `spool.jetstream` plus what delivery implies, see
    `relay.spool.jetstream.options`), a plain mapping so that the spool imports no config."""

    spool: str
    admin: str | None


BACKENDS: dict[str, Backend] = {
    "sqlite": Backend("relay.spool.sqlite:SqliteSpool", "relay.spool.sqlite.admin:SqliteAdmin"),
    # everything in the relay's memory, lost on exit: for tests of sources and delivery
    "memory": Backend("relay.spool.memory:MemorySpool", None),
    # a replicated stream on a NATS JetStream cluster, shared by several relays
    "jetstream": Backend(
        "relay.spool.jetstream.spool:JetStreamSpool", "relay.spool.jetstream.admin:JetStreamAdmin"
    ),
}


def import_from_string(ref: str) -> Any:
    """The attribute named by "package.module:attribute" (uvicorn's `importer.py` convention)."""
    module_name, _, attrs = ref.partition(":")
    if not module_name or not attrs:
        raise ImportError(f'"{ref}" is not of the form "module:attribute"')
    value: Any = importlib.import_module(module_name)
    for attr in attrs.split("."):
        try:
            value = getattr(value, attr)
        except AttributeError:
            raise ImportError(f'module "{module_name}" has no attribute "{attrs}"') from None
    return value


def backend(name: str) -> Backend:
    """The registered backend called `name`; a one-line ConfigError naming the choices."""
    try:
        return BACKENDS[name]
    except KeyError:
        choices = ", ".join(f'"{n}"' for n in BACKENDS)
        raise ConfigError(f'spool.backend must be one of {choices}, got "{name}"') from None


async def open_spool(
    name: str,
    path: str,
    *,
    max_bytes: int,
    dedup_window: float,
    on_commit: Callable[[float], None] | None = None,
    options: Mapping[str, Any] | None = None,
) -> Spool:
    """Open the spool of backend `name` (`spool.backend`) for the running relay."""
    cls = import_from_string(backend(name).spool)
    kwargs: dict[str, Any] = {"max_bytes": max_bytes, "dedup_window": dedup_window}
    if on_commit is not None:
        kwargs["on_commit"] = on_commit
    if options is not None:
        kwargs["options"] = options
    return await cls.open(path, **kwargs)


def open_admin(
    name: str, path: str, *, max_bytes: int, options: Mapping[str, Any] | None = None
) -> SpoolAdmin:
    """The admin side of backend `name`, for the `relay spool` and `relay dlq` commands."""
    ref = backend(name).admin
    if ref is None:
        raise SpoolUnreadable(
            f'spool.backend "{name}" keeps nothing outside the relay process: '
            "there is no spool to inspect"
        )
    if options is not None:
        return import_from_string(ref)(path, max_bytes=max_bytes, options=options)
    return import_from_string(ref)(path, max_bytes=max_bytes)
