"""The SQLite backend (`spool.backend = "sqlite"`): one file, one writer thread, group commit.

In data-flow order: `spool.py` (the asyncio face), `writer.py` (the thread: group commit, the
transaction, lease cursor, dedup staging), `sql.py` (the statements), `schema.py` (tables,
sizes, migrations), `dedup_log.py` (the log's upkeep), `health.py` (refusals, disk reserve,
probing, corruption), `open.py` (lock, leftovers, quarantine), `admin.py` (the `relay spool` and
`relay dlq` side, with `dead_letters.py` and `salvage.py`).
"""

from relay.spool.sqlite.spool import SqliteSpool

__all__ = ["SqliteSpool"]
