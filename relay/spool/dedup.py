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

Each digest is held once, as a packed 8-byte machine integer, never as a Python int object (a
set of ints plus per-bucket arrays cost ~80-90 bytes per digest: ~90 MB per million, most of the
relay's memory with a full dedup window):

- `known` is 4 096 shards chosen by the digest's top 12 bits, each a sorted `array('q')` searched
  with `bisect`. A million digests leave ~244 per shard: a lookup is ~8 comparisons, an insert or
  removal moves ~2 KB, and there is no big table to rehash (a resize would hold two tables at
  once, which a peak-RSS budget cannot afford).
- Next to each shard, a `bytearray` holds one byte per entry: the tag of the bucket it belongs
  to. A bucket is then a tag, a count, a start time and its last log row, not a copy of its
  digests. Forgetting buckets is one pass over the shards, the tagged entries found by
  `bytes.translate` and `rfind` in C (a few ms for a million held).

That is ~10 bytes per digest (8 + 1 + the arrays' growth slack; the 8 192 empty arrays cost
~0.5 MB): ~10 MB per million (tests/spool/test_dedup.py holds it to that). The price is CPU:
`d in known` runs a Python-level `__contains__` and a commit inserts new digests one by one, each
about 3 times what a set costs (benchmarks/dedup_micro.py; figures in benchmarks/README.md), a few
per cent of what an event costs on the ingest path. The start-up load takes its digests in bulk
(`begin_load` / `end_load`: appended unsorted, each shard sorted once at the end), about 1.5 s of
CPU for a million here against 2.3 s one by one.

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

# ~10 MB at most (one packed copy of each digest and a tag byte: see above)
MAX_DIGESTS = 1_000_000
_SLICES = 64  # a bucket spans at most window / 64 seconds and MAX_DIGESTS / 64 digests
# a bound on the buckets themselves: normally at most ~2 * _SLICES exist (full by count, or by
# time), but a clock that keeps going back starts a bucket per commit. Below 256, so that the
# tag byte of each bucket held is unique (tags are handed out in turn and buckets go in turn).
_MAX_BUCKETS = 255

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
    """A multiset of signed 64-bit digests in sorted, sharded `array('q')`s (see above), each
    entry tagged with the byte of the bucket holding it (a parallel `bytearray` per shard)."""

    __slots__ = ("_shards", "_tags", "_len", "_loading")

    def __init__(self) -> None:
        self._shards = [array("q") for _ in range(1 << _SHARD_BITS)]
        self._tags = [bytearray() for _ in range(1 << _SHARD_BITS)]
        self._len = 0
        # While loading (start-up) entries are appended unsorted, each shard sorted once at the
        # end: no copy of them is made (a peak-RSS budget), and forgetting by tag still works.
        self._loading = False

    def __len__(self) -> int:
        return self._len

    def __contains__(self, d: int) -> bool:
        # the ingest hot path (once per stored event): kept to a few bytecodes
        shard = self._shards[d >> _SHIFT]
        i = bisect_left(shard, d)
        return i != len(shard) and shard[i] == d

    def begin_load(self) -> None:
        """Take entries in bulk until `end_load`: inserting a million one by one into sorted
        shards costs seconds of CPU at start-up, sorting each shard once a fraction of that.
        Until then `in` is not to be asked (nobody asks while the spool loads)."""
        self._loading = True

    def end_load(self) -> None:
        if not self._loading:
            return
        self._loading = False
        for k, shard in enumerate(self._shards):
            if len(shard) < 2:
                continue
            # (d << 8) | tag sorts as (d, tag) does: one list of ints per shard (~250), not more
            keys = [(d << 8) | t for d, t in zip(shard, self._tags[k], strict=True)]
            keys.sort()
            self._shards[k] = array("q", [key >> 8 for key in keys])
            self._tags[k] = bytearray([key & 0xFF for key in keys])

    def add_all(self, digests: Iterable[int], tag: int) -> None:
        if self._loading:
            shards, tags, n = self._shards, self._tags, 0
            for d in digests:
                k = d >> _SHIFT
                shards[k].append(d)
                tags[k].append(tag)
                n += 1
            self._len += n
            return
        shards, tags = self._shards, self._tags
        n = 0
        for d in digests:
            k = d >> _SHIFT
            shard = shards[k]
            i = bisect_left(shard, d)
            shard.insert(i, d)
            tags[k].insert(i, tag)
            n += 1
        self._len += n

    def remove_tags(self, gone: Collection[int]) -> None:
        """Remove every entry tagged with one of `gone`: one pass over the shards, the search
        for the tags done by `bytes.translate` and `rfind` in C."""
        marks = bytearray(256)  # a translation table: 1 for the tags to remove, 0 for the others
        for tag in gone:
            marks[tag] = 1
        n = 0
        for shard, tags in zip(self._shards, self._tags, strict=True):
            marked = tags.translate(marks)
            i = marked.rfind(1)
            while i >= 0:  # from the end, so that the indexes still to come do not move
                del shard[i]
                del tags[i]
                n += 1
                i = marked.rfind(1, 0, i)
        self._len -= n


class _Bucket:
    __slots__ = ("started", "tag", "count", "last_rowid")

    def __init__(self, started: float, tag: int) -> None:
        self.started = started
        self.tag = tag  # marks its digests in `known`; unique among the buckets held
        self.count = 0
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
        self._buckets_made = 0
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
        buckets = self._buckets
        bucket = buckets[-1] if buckets else None
        while digests:
            if (
                bucket is None
                or seen_at >= bucket.started + self._width
                or seen_at < bucket.started  # the clock went back: start afresh from here
                or bucket.count >= self._per_bucket
            ):
                if len(buckets) >= _MAX_BUCKETS:
                    self._forget(1)  # before its tag byte comes round again
                bucket = _Bucket(seen_at, self._buckets_made & 0xFF)
                self._buckets_made += 1
                buckets.append(bucket)
            room = self._per_bucket - bucket.count
            taken, digests = digests[:room], digests[room:]
            self.known.add_all(taken, bucket.tag)
            bucket.count += len(taken)
            # a log row split over buckets may be deleted only with the last of them
            bucket.last_rowid = last_rowid if not digests else last_rowid - 1
        held, n = len(self.known), 0
        while held > self._max and n < len(buckets) - 1:
            held -= buckets[n].count
            n += 1
        if n:
            self._forget(n)

    def expire(self, now: float) -> None:
        """Forget every bucket whose oldest digest is older than the window."""
        cutoff = now - self.window
        buckets, n = self._buckets, 0
        while n < len(buckets) and buckets[n].started < cutoff:
            n += 1
        if n:
            self._forget(n)

    def _forget(self, n: int) -> None:
        """Forget the `n` oldest buckets, in one pass over `known`."""
        gone = [self._buckets.popleft() for _ in range(n)]
        self.known.remove_tags({b.tag for b in gone})
        self.forgotten_rowid = max(self.forgotten_rowid, *(b.last_rowid for b in gone))
