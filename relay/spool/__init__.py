"""The durable spool between sources and delivery. Only this package touches SQLite."""

from relay.spool.dead_letters import (
    DeadLetterRecord,
    list_dead_letters,
    purge_dead_letters,
    replay_dead_letters,
)
from relay.spool.inspect import check_spool, per_source, read_stats
from relay.spool.sqlite import SqliteSpool
from relay.spool.types import (
    NOT_KEPT,
    AppendResult,
    DeadLetter,
    Incoming,
    Leased,
    Reject,
    Release,
    Spool,
    SpoolFull,
    SpoolRefused,
    SpoolStats,
    SpoolUnavailable,
)

__all__ = [
    "NOT_KEPT",
    "AppendResult",
    "DeadLetter",
    "DeadLetterRecord",
    "Incoming",
    "Leased",
    "Reject",
    "Release",
    "Spool",
    "SpoolFull",
    "SpoolRefused",
    "SpoolStats",
    "SpoolUnavailable",
    "SqliteSpool",
    "check_spool",
    "list_dead_letters",
    "per_source",
    "purge_dead_letters",
    "read_stats",
    "replay_dead_letters",
]
