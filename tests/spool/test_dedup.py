"""The in-memory dedup digests (`relay/spool/dedup.py`) against a plain model.

The model is the list of every digest occurrence ever remembered, in order, with its time and
its dedup-log row. Buckets are only ever forgotten from the oldest, so what `RecentDigests`
holds must be exactly the newest `len(recent)` occurrences: a digest is known if and only if it
occurs among them. On top of that: nothing is held past the window, the newest
`max_digests - per bucket` within the window are always held, and `forgotten_rowid` only grows
and never passes a row that still has a digest held.
"""

from __future__ import annotations

import gc
import random
import tracemalloc
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from relay.spool import dedup as dedup_module
from relay.spool.dedup import MAX_DIGESTS, RecentDigests, SortedDigests, digest, pack, unpack

INT64 = st.integers(-(1 << 63), (1 << 63) - 1)
# a few digests that come back often, so that duplicates and re-adds happen
FAMILIAR = [-(1 << 63), -1, 0, 1, (1 << 63) - 1, 1 << 52, -(1 << 52), 12345, -98765, 7 << 60]
DIGESTS = st.one_of(st.sampled_from(FAMILIAR), INT64)
WINDOW = 64.0  # slices of 1 s


class DigestsModel(RuleBasedStateMachine):
    """The writer's calls in the writer's order: expire, stage, then commit or discard; and the
    start-up load (`add` of whole log rows). The clock never goes back here (see below)."""

    @initialize(max_digests=st.sampled_from([1, 5, 64, 130, 300]))
    def start(self, max_digests: int) -> None:
        self.recent = RecentDigests(WINDOW, max_digests)
        self.max = max_digests
        self.per_bucket = max(1, max_digests // 64)
        self.now = 1000.0
        self.cutoff = float("-inf")  # of the last expire
        self.occurrences: list[tuple[int, float, int]] = []  # (digest, seen_at, log row)
        self.staged: dict[int, None] = {}
        self.rowid = 0
        self.forgotten = 0
        # the familiar digests and the last few hundred seen: checked after every step
        self.seen: dict[int, None] = {}

    def _saw(self, digests: list[int]) -> None:
        for d in digests:
            self.seen.pop(d, None)
            self.seen[d] = None
        while len(self.seen) > 300:
            del self.seen[next(iter(self.seen))]

    @rule(dt=st.floats(0, 3))
    def clock(self, dt: float) -> None:
        self.now += dt

    @rule()
    def expire(self) -> None:
        self.recent.expire(self.now)
        self.cutoff = self.now - WINDOW

    @rule(digests=st.lists(DIGESTS, max_size=40))
    def stage(self, digests: list[int]) -> None:
        # as Store.append: only digests neither known nor staged, each once
        fresh = dict.fromkeys(d for d in digests if d not in self.recent)
        self.recent.stage(fresh)
        self.staged.update(fresh)
        self._saw(digests)

    @rule()
    def commit(self) -> None:
        if self.staged:
            self.rowid += 1
            self.recent.staged_rowid = self.rowid  # what Store.flush does
            self.occurrences += [(d, self.now, self.rowid) for d in self.staged]
        self.recent.commit_staged(self.now)
        self.staged = {}

    @rule()
    def discard(self) -> None:
        self.recent.discard_staged()
        self.staged = {}

    @precondition(lambda self: not self.staged)
    @rule(digests=st.lists(DIGESTS, min_size=1, max_size=60), packed=st.booleans())
    def load_row(self, digests: list[int], packed: bool) -> None:
        # a dedup-log row read back at start-up: may repeat a digest held already
        self.rowid += 1
        self.recent.add(array("q", digests) if packed else digests, self.now, self.rowid)
        self.occurrences += [(d, self.now, self.rowid) for d in digests]
        self._saw(digests)

    @invariant()
    def staged_as_modelled(self) -> None:
        assert self.recent.staged == list(self.staged)
        assert set(self.recent.staged_set) == set(self.staged)

    @invariant()
    def holds_exactly_the_newest(self) -> None:
        held = len(self.recent)
        assert held == len(self.recent.known) <= len(self.occurrences)
        newest = self.occurrences[len(self.occurrences) - held :]
        newest_digests = {d for d, _, _ in newest}
        for d in [*FAMILIAR, *self.seen]:
            assert (d in self.recent.known) == (d in newest_digests), d
            assert (d in self.recent) == (d in newest_digests or d in self.staged), d

    @invariant()
    def bounded_by_the_cap(self) -> None:
        assert len(self.recent) <= max(self.max, self.per_bucket)

    @invariant()
    def nothing_held_past_the_window(self) -> None:
        held = self.occurrences[len(self.occurrences) - len(self.recent) :]
        assert all(seen_at >= self.cutoff for _, seen_at, _ in held)

    @invariant()
    def forgets_only_what_the_cap_or_the_window_asks(self) -> None:
        # the newest occurrences within the window (a bucket's slice later) and within the cap
        # (a bucket short of it) are held
        must = 0
        for _, seen_at, _ in reversed(self.occurrences):
            if must >= self.max - self.per_bucket or seen_at < self.cutoff + WINDOW / 64:
                break
            must += 1
        assert len(self.recent) >= must

    @invariant()
    def forgotten_rowid_is_right(self) -> None:
        f = self.recent.forgotten_rowid
        assert f >= self.forgotten  # monotone
        self.forgotten = f
        held = self.occurrences[len(self.occurrences) - len(self.recent) :]
        if held:
            # log rows are consecutive here: every row before the oldest held one may go, and
            # that one (part of it may be forgotten) may not
            assert f == held[0][2] - 1
        else:
            assert f == (self.occurrences[-1][2] if self.occurrences else 0)


TestDigestsModel = DigestsModel.TestCase
TestDigestsModel.settings = settings(max_examples=40, stateful_step_count=40, deadline=None)


@settings(max_examples=50, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.floats(-5000, 5000), st.lists(DIGESTS, min_size=1, max_size=8)),
        max_size=150,
    ),
)
def test_a_clock_going_back_never_makes_a_new_digest_known(
    steps: list[tuple[float, list[int]]],
) -> None:
    # the clock going back starts a new bucket each time: still bounded, still no false "known"
    recent = RecentDigests(WINDOW, 50)
    added: set[int] = set()
    for i, (t, digests) in enumerate(steps):
        recent.expire(t)
        recent.add(digests, t, i + 1)
        added.update(digests)
        assert len(recent) <= 50
        assert len(recent._buckets) <= dedup_module._MAX_BUCKETS
    for d in FAMILIAR + [d for _, ds in steps for d in ds]:
        if d in recent:
            assert d in added
    assert recent.forgotten_rowid <= len(steps)


@settings(deadline=None)  # a shared, loaded machine
@given(
    st.lists(st.tuples(DIGESTS, st.integers(0, 255)), max_size=150),
    st.sets(st.integers(0, 255), max_size=20),
)
def test_sorted_digests_is_a_multiset_of_tagged_digests(
    held: list[tuple[int, int]], gone: set[int]
) -> None:
    s = SortedDigests()
    for d, tag in held:
        s.add_all([d], tag)
    s.remove_tags(gone)
    model = [d for d, tag in held if tag not in gone]
    assert len(s) == len(model)
    for d, _ in held:
        assert (d in s) == (d in model)
    for d in FAMILIAR:
        assert (d in s) == (d in model)


@settings(deadline=None)
@given(
    st.lists(st.tuples(DIGESTS, st.integers(0, 255)), max_size=150),
    st.lists(st.tuples(DIGESTS, st.integers(0, 255)), max_size=50),
)
def test_a_bulk_load_holds_what_adding_one_by_one_holds(
    loaded: list[tuple[int, int]], later: list[tuple[int, int]]
) -> None:
    one_by_one, bulk = SortedDigests(), SortedDigests()
    bulk.begin_load()
    for d, tag in loaded:
        one_by_one.add_all([d], tag)
        bulk.add_all([d], tag)
    assert len(bulk) == len(one_by_one)
    bulk.end_load()
    for d, tag in later:  # after the load, the one-by-one path on the loaded shards
        one_by_one.add_all([d], tag)
        bulk.add_all([d], tag)
    # the same (digest, tag) entries in each shard, the shard sorted by digest (equal digests
    # may stand in any order of their tags)
    for k, shard in enumerate(bulk._shards):
        assert list(shard) == sorted(shard)
        entries = sorted(zip(shard, bulk._tags[k], strict=True))
        assert entries == sorted(zip(one_by_one._shards[k], one_by_one._tags[k], strict=True))
    for d, _ in loaded + later:
        assert d in bulk


def test_a_forget_while_loading_sees_what_was_loaded() -> None:
    # the cap reached during the start-up load: the oldest buckets go, pending or not
    recent = RecentDigests(86400.0, 640)  # buckets of 10
    recent.known.begin_load()
    for row in range(100):
        recent.add([row * 100 + i for i in range(10)], 1000.0 + row, row + 1)
    recent.known.end_load()
    assert len(recent) == 640
    assert all(d in recent for d in range(3600, 9910, 100))
    assert not any(d in recent for d in range(0, 3600))


def test_the_cap_forgets_the_oldest_first() -> None:
    recent = RecentDigests(86400.0, 640)  # buckets of 10
    for row in range(100):
        recent.add([row * 100 + i for i in range(10)], 1000.0 + row, row + 1)
    assert len(recent) == 640
    assert all(d in recent for d in range(3600, 9910, 100))  # the newest 64 rows
    assert not any(d in recent for d in range(0, 3600))
    assert recent.forgotten_rowid == 36


def test_with_the_most_buckets_each_is_forgotten_alone() -> None:
    # a clock that goes back and forth starts a bucket per add: the oldest go once there are
    # _MAX_BUCKETS, and only they (their tag bytes are unique among those held)
    recent = RecentDigests(86400.0)
    limit = dedup_module._MAX_BUCKETS
    for i in range(2 * limit + 20):
        recent.add([i], 1000.0 + 2000.0 * (i % 2), i + 1)  # a slice is 1 350 s
        held = min(i + 1, limit)
        assert len(recent) == held
        if i % 8:
            continue
        assert all(d in recent for d in range(i + 1 - held, i + 1))
        assert not any(d in recent for d in range(i + 1 - held))
        assert recent.forgotten_rowid == i + 1 - held


def test_digests_are_signed_64_bit_and_pack_round_trips() -> None:
    ds = [digest(str(i).encode()) for i in range(1000)] + [-(1 << 63), (1 << 63) - 1]
    assert all(-(1 << 63) <= d < (1 << 63) for d in ds)
    assert list(unpack(pack(ds))) == ds
    assert len(pack(ds)) == 8 * len(ds)


def _bytes_held(n: int) -> int:
    rng = random.Random(n)
    rows = [
        array("q", (rng.getrandbits(64) - (1 << 63) for _ in range(20_000)))
        for _ in range(n // 20_000)
    ]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        recent = RecentDigests(86400.0)
        for i, row in enumerate(rows):
            recent.add(row, 1000.0, i + 1)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(recent) == n
    return held


def test_forty_thousand_digests_cost_under_one_and_a_half_megabytes() -> None:
    assert _bytes_held(40_000) < 1_500_000  # ~0.4 MB, and ~0.5 MB for the 8 192 arrays


@pytest.mark.e2e
def test_a_million_digests_cost_under_12_mb() -> None:
    # a set of ints cost ~78 MB here (tracemalloc); the tagged, packed shards ~10 MB
    assert MAX_DIGESTS == 1_000_000
    assert _bytes_held(MAX_DIGESTS) < 12_000_000
