"""The durable spool between sources and delivery. Only this package touches SQLite."""

from relay.spool.inspect import read_stats
from relay.spool.sqlite import SqliteSpool
from relay.spool.types import (
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
    "AppendResult",
    "DeadLetter",
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
    "read_stats",
]
