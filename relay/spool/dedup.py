"""Digests of recently stored events, held in memory by the spool's writer thread.

Each digest is also appended to the `dedup_log` table in the transaction that stores its event,
so a digest that was committed is known again after a crash (the log is read back at start-up).
The log has no index and is only ever appended to and cut at the front by rowid range: no random
B-tree pages are written per event.

Digests are the first 64 bits of the event's SHA-256. Two different events share them with odds
of about n / 2**64 per new event against n remembered digests: with the cap below (10**6) about
one in 18 trillion per event, so ~5e-8 for a day of a million events. Such a collision would
acknowledge a new event as a duplicate without storing it; at these odds that is accepted.

Memory is bounded whatever the rate: digests are kept in buckets of a slice of the window (or of
the cap), a whole bucket is forgotten once its oldest digest is past the window, and when more
than MAX_DIGESTS are held the oldest buckets are forgotten early. Forgetting early only ever lets
a duplicate through; it never turns a new event away.

Every digest is held twice, both times as a packed 8-byte machine integer, never as a Python int
object (a set of ints costs ~90 bytes per digest: 90 MB per million, most of the relay's memory
with a full dedup window):

- in its time bucket, an `array('q')` in arrival order: what to forget when the bucket goes;
- in `known`, the membership structure: 4 096 shards chosen by the digest's top 12 bits, each a
  sorted `array('q')` searched with `bisect`. A million digests leave ~244 per shard, so a lookup
  is 8 comparisons and an insert or removal moves ~1 KB; there is no big table to rehash (a resize
  would briefly hold both copies, which is what a peak-RSS budget cannot afford).

That is ~17 bytes per digest (8 + 8 + the arrays' growth slack; the 4 096 empty shards cost
~0.3 MB): 17 MB per million instead of ~90. The price is CPU: `d in known` runs a Python-level
`__contains__` (~0.3 µs instead of ~0.05 µs for a set), and a commit inserts each new digest one
by one (~0.4 µs each); on the ingest path that is under 1 µs of the 15-80 µs an event costs
(measured in benchmarks/README.md, "dedup digests").

`known` is a multiset: a digest logged twice (stored again after the cap forgot it) is held once
per bucket holding it and stays known until the newest of them goes.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Collection, Iterable, Sequence

# ~17 MB at most (two packed copies of each digest: see above)
MAX_DIGESTS = 1_000_000
_SLICES = 64  # a bucket spans at most window / 64 seconds and MAX_DIGESTS / 64 digests
# a bound on the buckets themselves: normally at most ~2 * _SLICES exist (full by count, or by
# time), but a clock that keeps going back starts a bucket per commit, each a few objects
_MAX_BUCKETS = 4 * _SLICES

_SHARD_BITS = 12
_SHIFT = 64 - _SHARD_BITS  # d >> _SHIFT is in [-2048, 2047]: a list index, negative from the end


_sha256 = hashlib.sha256
_first_int64 = struct.Struct(">q").unpack_from  # the first 8 bytes, big-endian, signed


def digest(body: bytes) -> int:
    """The dedup identity of an event's canonical bytes: a signed 64-bit int."""
    return _first_int64(_sha256(body).digest())[0]


def pack(digests: list[int]) -> bytes:
    """Digests as stored in one `dedup_log` row: 8 bytes each, little-endian."""
    packed = array("q", digests)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def unpack(blob: bytes) -> array:
    digests = array("q")
    digests.frombytes(blob)
    if sys.byteorder == "big":
        digests.byteswap()
    return digests


class SortedDigests:
    """A multiset of signed 64-bit digests in sorted, sharded `array('q')`s (see above)."""

    __slots__ = ("_shards", "_len")

    def __init__(self) -> None:
        self._shards = [array("q") for _ in range(1 << _SHARD_BITS)]
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __contains__(self, d: int) -> bool:
        # the ingest hot path (once per stored event): kept to a few bytecodes
        shard = self._shards[d >> _SHIFT]
        i = bisect_left(shard, d)
        return i != len(shard) and shard[i] == d

    def add_all(self, digests: Iterable[int]) -> None:
        shards = self._shards
        n = 0
        for d in digests:
            shard = shards[d >> _SHIFT]
            shard.insert(bisect_left(shard, d), d)
            n += 1
        self._len += n

    def remove_all(self, digests: Iterable[int]) -> None:
        """Remove one occurrence of each (each must be held: they come from a bucket)."""
        shards = self._shards
        n = 0
        for d in digests:
            shard = shards[d >> _SHIFT]
            i = bisect_left(shard, d)
            if i != len(shard) and shard[i] == d:
                del shard[i]
                n += 1
        self._len -= n


class _Bucket:
    __slots__ = ("started", "digests", "last_rowid")

    def __init__(self, started: float) -> None:
        self.started = started
        self.digests = array("q")
        self.last_rowid = 0  # the last `dedup_log` row holding one of these digests


class RecentDigests:
    """The digests seen within `window` seconds, plus those of the transaction in progress."""

    def __init__(self, window: float, max_digests: int | None = None) -> None:
        self.window = window
        self._max = max_digests or MAX_DIGESTS
        self._width = window / _SLICES
        self._per_bucket = max(1, self._max // _SLICES)
        self.known = SortedDigests()  # read directly by the writer's hot path (Store.append)
        self._buckets: deque[_Bucket] = deque()
        # written to the log in the open transaction: known for good only once it commits
        self.staged_set: set[int] = set()
        self.staged: list[int] = []
        self.staged_rowid = 0  # the log row of the last staged digest, once written
        self.forgotten_rowid = 0  # `dedup_log` rows up to this one may be deleted

    def __len__(self) -> int:
        return len(self.known)

    def __contains__(self, d: int) -> bool:
        return d in self.known or d in self.staged_set

    def stage(self, digests: Collection[int]) -> None:
        self.staged.extend(digests)
        self.staged_set.update(digests)

    def discard_staged(self) -> None:
        self.staged_set.clear()
        self.staged = []

    def commit_staged(self, seen_at: float) -> None:
        if self.staged:
            self.add(self.staged, seen_at, self.staged_rowid)
        self.discard_staged()

    def add(self, digests: Sequence[int], seen_at: float, last_rowid: int) -> None:
        """Remember committed digests (in log order: `last_rowid` never goes back)."""
        bucket = self._buckets[-1] if self._buckets else None
        while digests:
            if (
                bucket is None
                or seen_at >= bucket.started + self._width
                or seen_at < bucket.started  # the clock went back: start afresh from here
                or len(bucket.digests) >= self._per_bucket
            ):
                bucket = _Bucket(seen_at)
                self._buckets.append(bucket)
            room = self._per_bucket - len(bucket.digests)
            taken, digests = digests[:room], digests[room:]
            bucket.digests.extend(taken)
            self.known.add_all(taken)
            # a log row split over buckets may be deleted only with the last of them
            bucket.last_rowid = last_rowid if not digests else last_rowid - 1
        while len(self._buckets) > 1 and (
            len(self.known) > self._max or len(self._buckets) > _MAX_BUCKETS
        ):
            self._forget_oldest()

    def expire(self, now: float) -> None:
        """Forget every bucket whose oldest digest is older than the window."""
        cutoff = now - self.window
        while self._buckets and self._buckets[0].started < cutoff:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        bucket = self._buckets.popleft()
        self.known.remove_all(bucket.digests)
        self.forgotten_rowid = max(self.forgotten_rowid, bucket.last_rowid)
