"""The crash test's durability witness: build the fsync shim, read its trace, check the ordering.

The relay may answer 200 only after the events are on disk. SIGKILL keeps the page cache, so a
crash test alone cannot tell a spool that fsyncs before acknowledging from one that does not
(`PRAGMA synchronous=OFF` would pass it). `tests/fsync_shim.c`, preloaded into the relay, records
when every fsync/fdatasync started and ended; the producers record when they sent each request
and when its 200 arrived. Every 200 must have a completed sync of a spool file inside that window.
"""

from __future__ import annotations

import bisect
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import orjson

SHIM_SOURCE = Path(__file__).with_name("fsync_shim.c")
DURABLE = frozenset({"fsync", "fdatasync"})  # the calls that SQLite's commit relies on


@dataclass(frozen=True, slots=True)
class Sync:
    name: str
    start: float  # CLOCK_MONOTONIC seconds, the clock of Python's time.monotonic() on Linux
    end: float
    result: int
    path: str


@dataclass(frozen=True, slots=True)
class Ack:
    """One 200 and the window in which a sync of the spool must have completed for it.

    `sent` is this attempt's send; for a retry answered "duplicates" it is the batch's first
    send: that answer stores nothing new (so syncs nothing) and vouches for what an earlier,
    maybe killed, process wrote; any later completed sync of the spool's WAL covers that write
    (fdatasync flushes the whole file), but it must still come before the 200."""

    sent: float  # time.monotonic() at the start of the window
    answered: float  # time.monotonic() just after its 200 arrived
    what: str  # for the report: the first message_id of the batch
    attempts: int = 1
    answer: str = ""  # the relay's answer, for the report
    duplicate_only: bool = False  # the relay said it had every event of the batch already


def build_shim(directory: Path) -> tuple[Path | None, str]:
    """Compile the shim with the system C compiler: (the .so, "") or (None, why not)."""
    if sys.platform != "linux":
        return None, "the fsync shim needs Linux (LD_PRELOAD, /proc/self/fd, CLOCK_MONOTONIC)"
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return None, "no C compiler (cc) to build the fsync shim"
    out = directory / "fsync_shim.so"
    build = subprocess.run(
        [cc, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(out), str(SHIM_SOURCE), "-ldl"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if build.returncode != 0:
        # a compiler that is there but fails is a broken test, not a reason to skip it
        raise RuntimeError(f"building the fsync shim failed:\n{build.stderr}")
    return out, ""


def shim_env(shim: Path, trace: Path, noop: bool = False) -> dict[str, str]:
    env = {"LD_PRELOAD": str(shim), "FSYNC_TRACE": str(trace)}
    if noop:
        env["FSYNC_SHIM_NOOP"] = "1"
    return env


def read_trace(trace: Path) -> tuple[list[str], list[Sync]]:
    """(the shim's `loaded` lines, one per process it was loaded into; the syncs it recorded)."""
    loaded: list[str] = []
    syncs: list[Sync] = []
    if not trace.exists():
        return loaded, syncs
    for line in trace.read_text(errors="replace").splitlines():
        parts = line.split(" ", 4)
        if parts[0] == "loaded":
            loaded.append(line)
        elif len(parts) == 5:  # a line cut by SIGKILL has fewer fields: skipped
            name, start, end, result, path = parts
            syncs.append(Sync(name, int(start) / 1e9, int(end) / 1e9, int(result), path))
    return loaded, syncs


def duplicate_only(answer: bytes) -> bool:
    """Whether the relay's 200 says it stored nothing new (every event already in the spool)."""
    try:
        body = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and body.get("duplicates", 0) > 0 and not body.get("accepted")


def ordering_violations(acks: list[Ack], syncs: list[Sync], spool_dir: Path) -> list[str]:
    """Every 200 that no successful fsync/fdatasync of a spool file can account for: none
    started after the request was sent and completed before the answer arrived."""
    prefix = str(spool_dir.resolve()) + "/"
    durable = sorted(
        (s for s in syncs if s.name in DURABLE and s.result == 0 and s.path.startswith(prefix)),
        key=lambda s: s.start,
    )
    starts = [s.start for s in durable]
    # earliest end among the syncs that start at index i or later
    earliest_end = [float("inf")] * (len(durable) + 1)
    for i in range(len(durable) - 1, -1, -1):
        earliest_end[i] = min(durable[i].end, earliest_end[i + 1])
    bad = []
    for ack in acks:
        i = bisect.bisect_left(starts, ack.sent)
        if earliest_end[i] > ack.answered:
            bad.append(
                f"{ack.what}: answered 200 on attempt {ack.attempts}, "
                f"{ack.answered - ack.sent:.4f} s after it was first sent ({ack.answer}), "
                "with no completed fsync of the spool in between"
            )
    return bad
