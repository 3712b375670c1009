"""The durable spool between sources and delivery: the contract (`api`) and its backends.

Only this package touches SQLite."""

from relay.spool.api import (
    BACKENDS,
    NOT_KEPT,
    AppendResult,
    DeadLetter,
    DeadLetterRecord,
    Incoming,
    Leased,
    Reject,
    Release,
    SalvageReport,
    Spool,
    SpoolAdmin,
    SpoolError,
    SpoolFull,
    SpoolRefused,
    SpoolStats,
    SpoolUnavailable,
    SpoolUnreadable,
    open_admin,
    open_spool,
)
from relay.spool.memory import MemorySpool
from relay.spool.sqlite import SqliteSpool
from relay.spool.sqlite.admin import SqliteAdmin, check_spool, per_source, read_stats
from relay.spool.sqlite.dead_letters import (
    list_dead_letters,
    purge_dead_letters,
    replay_dead_letters,
)

__all__ = [
    "BACKENDS",
    "NOT_KEPT",
    "AppendResult",
    "DeadLetter",
    "DeadLetterRecord",
    "Incoming",
    "Leased",
    "MemorySpool",
    "Reject",
    "Release",
    "SalvageReport",
    "Spool",
    "SpoolAdmin",
    "SpoolError",
    "SpoolFull",
    "SpoolRefused",
    "SpoolStats",
    "SpoolUnavailable",
    "SpoolUnreadable",
    "SqliteAdmin",
    "SqliteSpool",
    "check_spool",
    "list_dead_letters",
    "open_admin",
    "open_spool",
    "per_source",
    "purge_dead_letters",
    "read_stats",
    "replay_dead_letters",
]
