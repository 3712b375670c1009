"""Garbage-collector settings for a long-running relay.

With CPython's default (a young collection every 700 net allocations) the HTTP ingest path
collected hundreds of times a second: the objects of the requests waiting for their commit
(tasks, requests, headers) keep the net count high, and every young collection then walks them
all; every few seconds a full collection walked the whole heap (tens of milliseconds with every
request held up): ~8 % of the relay's CPU and ~3x the p99 latency under load (benchmarks/README.md).
Reference counting frees nearly everything here; the collector is only needed for the odd cycle,
so it runs rarely, and what exists after start-up is never traversed again.
"""

from __future__ import annotations

import gc

_YOUNG = 20_000  # net allocations between young collections (CPython's default: 700)


def tune() -> tuple[int, int, int]:
    """Collect rarely from now on; returns the previous thresholds for `restore`."""
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()  # start-up objects (modules, config, routes) move out of every generation
    gc.set_threshold(_YOUNG, before[1], before[2])
    return before


def restore(thresholds: tuple[int, int, int]) -> None:
    gc.set_threshold(*thresholds)
    gc.unfreeze()
