"""Micro-benchmark of the spool's in-memory dedup digests (`relay/spool/dedup.py`) at 1 M digests.

    .venv/bin/python -m benchmarks.dedup_micro [--n 1000000] [--rounds 3]

Uses only the interface the spool uses, so the same file measures another version of the module:
`PYTHONPATH=/path/to/other/tree python /path/to/this/file` (benchmarks/README.md has the figures).
Figures are medians of the rounds, each in the same process, one after the other:

- commit: digests remembered per second as the writer does it, `stage` + `commit_staged` per
  commit of 100 events;
- load: per second as at start-up, `add` of one 20 000-digest dedup-log row at a time;
- lookup: the ingest hot path's `d in known or d in staged` per second, half of them held;
- forget: per second as buckets expire;
- memory: bytes per digest held (tracemalloc, after the load of n digests).
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
import tracemalloc
from array import array

from relay.spool import dedup as dedup_module
from relay.spool.dedup import RecentDigests

_COMMIT = 100
_ROW = 20_000


def _digests(n: int, seed: int) -> array:
    rng = random.Random(seed)
    return array("q", (rng.getrandbits(64) - (1 << 63) for _ in range(n)))


def _commit(ds: array, window: float) -> tuple[float, RecentDigests]:
    recent = RecentDigests(window)
    t0 = time.process_time()
    for start in range(0, len(ds), _COMMIT):
        recent.stage(dict.fromkeys(ds[start : start + _COMMIT]))
        recent.staged_rowid = start // _COMMIT + 1
        recent.commit_staged(1000.0)
    return time.process_time() - t0, recent


def _load(ds: array, window: float) -> tuple[float, RecentDigests]:
    recent = RecentDigests(window)
    t0 = time.process_time()
    for start in range(0, len(ds), _ROW):
        recent.add(ds[start : start + _ROW], 1000.0, start // _ROW + 1)
    return time.process_time() - t0, recent


def _lookup(recent: RecentDigests, probes: list[int]) -> tuple[float, int]:
    known, staged = recent.known, recent.staged_set
    hits = 0
    t0 = time.process_time()
    for d in probes:
        if d in known or d in staged:
            hits += 1
    return time.process_time() - t0, hits


def _forget(recent: RecentDigests, window: float) -> float:
    t0 = time.process_time()
    recent.expire(1000.0 + 2 * window)
    return time.process_time() - t0


def _bytes_per_digest(ds: array, window: float) -> float:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    _, recent = _load(ds, window)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(recent) == len(ds)
    return held / len(ds)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    window = 86400.0
    ds = _digests(a.n, 1)
    absent = _digests(a.n // 2, 2)
    probes = list(ds[: a.n // 2]) + list(absent)
    random.Random(3).shuffle(probes)
    rates: dict[str, list[float]] = {"commit": [], "load": [], "lookup": [], "forget": []}
    for _ in range(a.rounds):
        took, recent = _commit(ds, window)
        rates["commit"].append(a.n / took)
        took, hits = _lookup(recent, probes)
        assert hits >= a.n // 2, hits
        rates["lookup"].append(len(probes) / took)
        rates["forget"].append(a.n / _forget(recent, window))
        took, recent = _load(ds, window)
        rates["load"].append(a.n / took)
        del recent
    print(f"module: {dedup_module.__file__}  n = {a.n:,}  rounds = {a.rounds}")
    for name, got in rates.items():
        print(
            f"{name:>7}: {statistics.median(got) / 1e6:6.2f} M/s  (rounds: "
            + ", ".join(f"{r / 1e6:.2f}" for r in got)
            + ")"
        )
    print(f" memory: {_bytes_per_digest(ds, window):6.1f} bytes per digest (tracemalloc)")


if __name__ == "__main__":
    main()
