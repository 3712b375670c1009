"""The spool contract (`relay.spool.api`): what every backend in `BACKENDS` must do, tested the
same way against each. A new backend joins by being registered and by saying, in `_Backend`
below, how a test opens it, reaches its admin side and knows that a lease is waiting.

Backend-specific behaviour (SQLite's WAL, quarantine, migrations, fsync) is tested in the other
modules of this folder.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from relay.errors import ConfigError
from relay.spool import (
    BACKENDS,
    DeadLetter,
    Incoming,
    MemorySpool,
    Reject,
    Release,
    Spool,
    SpoolAdmin,
    SpoolFull,
    SpoolUnavailable,
    SqliteSpool,
    open_spool,
)
from relay.spool.api import ROW_OVERHEAD, import_from_string
from relay.spool.api import backend as registered_backend
from relay.spool.memory_admin import MemoryAdmin
from relay.spool.sqlite.admin import SqliteAdmin
from tests.helpers import eventually
from tests.helpers.nats import NatsCluster

GiB = 1 << 30


def ev(n: int, pad: int = 0, source: str = "test") -> Incoming:
    return Incoming(f'{{"n":{n},"pad":"{"x" * pad}"}}'.encode(), source)


def bodies(items) -> list[bytes]:
    return [item.body for item in items]


@dataclass
class _Backend:
    """One backend as the tests meet it."""

    name: str
    open: Callable[..., object]  # async (max_bytes=..., dedup_window=...) -> Spool
    admin: Callable[[Spool], SpoolAdmin]
    waiting: Callable[[Spool], bool]  # a lease is blocked waiting for events
    # stats count exactly the events' bodies; otherwise what the backend stores for them
    # (JetStream: headers and a record's overhead too), at most ROW_OVERHEAD x 4 more each
    exact_bytes: bool = True

    def check_bytes(self, counted: int, bodies: list[int]) -> None:
        if self.exact_bytes:
            assert counted == sum(bodies)
        else:
            assert sum(bodies) <= counted <= sum(bodies) + 4 * ROW_OVERHEAD * len(bodies)


def _backends(tmp_path: Path, nats_cluster: Callable[[], NatsCluster]) -> dict[str, _Backend]:
    async def sqlite(**kw) -> SqliteSpool:
        return await open_spool("sqlite", str(tmp_path / "spool"), **kw)

    async def memory(**kw) -> MemorySpool:
        return await open_spool("memory", str(tmp_path / "spool"), **kw)

    return {
        "sqlite": _Backend(
            "sqlite",
            sqlite,
            lambda spool: SqliteAdmin(spool.directory, max_bytes=spool.stats().capacity_bytes),
            lambda spool: bool(spool._new_events._waiters),
        ),
        "memory": _Backend(
            "memory",
            memory,
            MemoryAdmin,
            lambda spool: bool(spool._wake._waiters),
        ),
        "jetstream": _jetstream(nats_cluster),
    }


def _jetstream(cluster_of: Callable[[], NatsCluster]) -> _Backend:
    """Each spool gets streams of its own on a 3-node cluster shared by the module's tests."""

    def options() -> dict:
        name = f"T{uuid.uuid4().hex[:12].upper()}"
        return {
            "servers": cluster_of().urls,
            "stream": name,
            "subject": f"t.{name.lower()}",
            "consumer": "delivery",
            "replicas": 3,
            "connect_timeout": 5.0,
            "ack_wait": 30.0,
        }

    async def jetstream(**kw) -> Spool:
        return await open_spool("jetstream", "unused", options=options(), **kw)

    def admin(spool: Spool) -> SpoolAdmin:
        return import_from_string(BACKENDS["jetstream"].admin)(
            "unused",
            max_bytes=spool.stats().capacity_bytes,
            options=dataclasses.asdict(spool.options),
        )

    return _Backend(
        "jetstream",
        jetstream,
        admin,
        lambda spool: bool(spool._puller.arrived._waiters),
        exact_bytes=False,
    )


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory) -> Iterator[Callable[[], NatsCluster]]:
    """A cluster started on first use, so that a run of the other backends' tests starts none."""
    started: list[NatsCluster] = []

    def get() -> NatsCluster:
        if not started:
            started.append(NatsCluster(tmp_path_factory.mktemp("nats")).start())
        return started[0]

    yield get
    for cluster in started:
        cluster.stop()


@pytest.fixture(params=sorted(BACKENDS))
def backend(request, tmp_path: Path, nats_cluster: Callable[[], NatsCluster]) -> _Backend:
    known = _backends(tmp_path, nats_cluster)
    if request.param not in known:
        pytest.fail(f"backend {request.param!r} is registered but has no contract fixture")
    return known[request.param]


@pytest.fixture
async def spool(backend: _Backend) -> AsyncIterator[Spool]:
    opened = await backend.open(max_bytes=GiB, dedup_window=86400.0)
    yield opened
    await opened.close()


async def test_append_lease_ack_release_dead_letter(spool: Spool, backend: _Backend) -> None:
    result = await spool.append([ev(i) for i in range(10)])
    assert (result.accepted, result.duplicates, result.dead_lettered, result.not_kept) == (
        10,
        0,
        0,
        0,
    )
    assert spool.stats().events == 10

    first = await spool.lease(4)
    assert bodies(first) == bodies(ev(i) for i in range(4))
    assert [e.attempts for e in first] == [0] * 4
    second = await spool.lease(4)  # leased events are not handed out twice
    assert bodies(second) == bodies(ev(i) for i in range(4, 8))

    await spool.ack([first[0].id, first[1].id])
    await spool.release([Release(first[2].id, 0.0, "connection lost")])
    await spool.dead_letter([DeadLetter(first[3].id, "rejected", "upstream said no")])
    stats = spool.stats()
    assert (stats.events, stats.dead_letters) == (7, 1)
    backend.check_bytes(stats.bytes, [len(ev(i).body) for i in range(2, 10) if i != 3])

    again = await spool.lease(10)
    # the released event first (due for a retry), then the two never leased; not the leased
    assert bodies(again) == [ev(2).body, ev(8).body, ev(9).body]
    assert (again[0].id, again[0].attempts, again[0].rejections) == (first[2].id, 1, 0)
    assert await spool.lease(10) == []


async def test_events_come_in_the_order_stored(spool: Spool) -> None:
    for i in range(5):
        await spool.append([ev(3 * i), ev(3 * i + 1), ev(3 * i + 2)])
    leased = []
    while batch := await spool.lease(4):
        leased += batch
    assert bodies(leased) == bodies(ev(i) for i in range(15))
    assert [e.id for e in leased] == sorted(e.id for e in leased)
    assert all(e.source == "test" and e.received_at > 0 for e in leased)


async def test_acks_of_scattered_ids_delete_exactly_those(spool: Spool) -> None:
    await spool.append([ev(i) for i in range(20)])
    items = await spool.lease(20)
    acked = [items[i].id for i in (0, 1, 2, 5, 7, 8, 19)]
    await spool.ack(list(reversed(acked)) + acked[:2])  # any order, repeats harmless
    await spool.release([Release(e.id, 0.0, "again") for e in items])  # acked ones are gone
    left = await spool.lease(100)
    assert sorted(bodies(left)) == sorted(
        ev(i).body for i in range(20) if i not in (0, 1, 2, 5, 7, 8, 19)
    )
    assert spool.stats().events == 13


async def test_release_delay_and_rejections(spool: Spool) -> None:
    await spool.append([ev(1)])
    [item] = await spool.lease(1)
    await spool.release([Release(item.id, 0.3, "later", rejected=True)])
    assert await spool.lease(1) == []  # not before its delay
    # back within a wait that outlasts the delay
    [again] = await spool.lease(1, wait=3.0)
    assert (again.id, again.attempts, again.rejections) == (item.id, 1, 1)


async def test_release_never_hides_an_event_forever(spool: Spool) -> None:
    await spool.append([ev(1), ev(2)])
    a, b = await spool.lease(2)
    # whatever a caller asks, the event stays in the spool and is counted
    await spool.release([Release(a.id, float("inf"), "x"), Release(b.id, float("nan"), "y")])
    assert spool.stats().events == 2
    await spool.dead_letter([DeadLetter(a.id, "rejected", "gave up")])
    assert spool.stats().dead_letters == 1


async def test_lease_waits_and_wakes_on_append(spool: Spool, backend: _Backend) -> None:
    waiting = asyncio.create_task(spool.lease(10, wait=30))
    await eventually(lambda: backend.waiting(spool), 10, "the lease to wait")
    await spool.append([ev(1)])
    [item] = await asyncio.wait_for(waiting, 10)
    assert item.body == ev(1).body


async def test_lease_with_nothing_to_wait_for_returns_empty(spool: Spool) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await spool.lease(10, wait=0.2) == []
    assert loop.time() - started >= 0.19


async def test_a_waiting_lease_keeps_a_cancellation_that_meets_an_event(
    spool: Spool, backend: _Backend
) -> None:
    # Python 3.11's asyncio.wait_for returns normally when the awaited event is set in the
    # same loop iteration as the cancel: delivery's lease loop then never stopped (a hung
    # shutdown seen in CI). The cancellation must win.
    waiting = asyncio.create_task(spool.lease(10, wait=30))
    await eventually(lambda: backend.waiting(spool), 10, "the lease to wait")
    await spool.append([ev(1)])  # wakes the lease in the same callback that answers this
    if waiting.cancel():
        with pytest.raises(asyncio.CancelledError):
            await waiting
    else:
        # a networked backend may hand the event out before its append is answered: the lease
        # had returned it when the cancel came, which swallows nothing
        assert bodies(waiting.result()) == [ev(1).body]


async def test_duplicates_are_acknowledged_but_stored_once(spool: Spool) -> None:
    r1 = await spool.append([ev(1), ev(2), ev(1)])
    assert (r1.accepted, r1.duplicates) == (2, 1)
    r2 = await spool.append([ev(2), ev(3)])
    assert (r2.accepted, r2.duplicates) == (1, 1)

    # still a duplicate after delivery: a producer's retry must not cause a second delivery
    async def delivered() -> bool:
        # a replicated backend's lease may hand out fewer than are waiting: lease until none
        await spool.ack([i.id for i in await spool.lease(10, wait=0.1)])
        return spool.stats().events == 0

    await eventually(delivered, 10, "every event leased and acknowledged")
    r3 = await spool.append([ev(1)])
    assert (r3.accepted, r3.duplicates) == (0, 1)
    assert spool.stats().events == 0


async def test_dedup_window_expires(backend: _Backend) -> None:
    spool = await backend.open(max_bytes=GiB, dedup_window=0.2)
    try:
        await spool.append([ev(1)])
        assert (await spool.append([ev(1)])).duplicates == 1

        async def stored_again() -> bool:
            return (await spool.append([ev(1)])).accepted == 1

        await eventually(stored_again, 5, "the digest to be forgotten")
    finally:
        await spool.close()


async def test_no_dedup_without_a_window(backend: _Backend) -> None:
    spool = await backend.open(max_bytes=GiB, dedup_window=0)
    try:
        result = await spool.append([ev(1), ev(1)])
        assert (result.accepted, result.duplicates) == (2, 0)
    finally:
        await spool.close()


async def test_a_full_spool_refuses_the_whole_call_and_keeps_the_old(backend: _Backend) -> None:
    spool = await backend.open(max_bytes=20_000, dedup_window=86400.0)
    try:
        await spool.append([ev(1, pad=6000), ev(2, pad=6000)])
        assert spool.refusing() is None
        with pytest.raises(SpoolFull):
            await spool.append([ev(3, pad=100), ev(4, pad=6000), ev(5, pad=6000)])
        stats = spool.stats()
        assert stats.events == 2  # nothing of the refused call
        assert spool.refusing() is not None and stats.refusing == spool.refusing()
        items = await spool.lease(10)
        assert bodies(items) == [ev(1, pad=6000).body, ev(2, pad=6000).body]
        # the refused events were not remembered as stored: a retry that fits is stored
        await spool.ack([items[0].id])
        assert (await spool.append([ev(3, pad=100)])).accepted == 1
        assert spool.refusing() is None
    finally:
        await spool.close()


async def test_rejects_go_to_dead_letters(spool: Spool, backend: _Backend) -> None:
    result = await spool.append([ev(1)], [Reject("not json", "bad JSON", "http")])
    assert (result.accepted, result.dead_lettered) == (1, 1)
    stats = spool.stats()
    assert (stats.events, stats.dead_letters) == (1, 1)
    assert stats.invalid_bytes == stats.dead_letter_bytes > len("not json")
    [record] = await backend.admin(spool).list_dead_letters()
    assert (record.event_id, record.reason, record.source, record.body) == (
        None,
        "invalid",
        "http",
        b"not json",
    )
    assert (record.first_error, record.last_error, record.attempts) == ("bad JSON", "bad JSON", 0)


async def test_junk_fills_only_its_share_and_never_refuses_valid_events(
    backend: _Backend,
) -> None:
    spool = await backend.open(max_bytes=100_000, dedup_window=0)
    try:
        junk = [Reject("j" * 1000, "bad", "tcp") for _ in range(30)]
        result = await spool.append([ev(1)], junk)
        # about 10% of max_bytes is invalid input's share: the first rejects, in order
        assert result.accepted == 1
        assert 5 <= result.dead_lettered < 10
        assert result.dead_lettered + result.not_kept == 30
        stats = spool.stats()
        assert stats.invalid_not_kept == result.not_kept
        assert stats.invalid_bytes <= stats.invalid_capacity_bytes == 10_000
        assert (await spool.append([ev(2, pad=50_000)])).accepted == 1
    finally:
        await spool.close()


async def test_rejects_kept_are_the_first_of_the_call_in_order(backend: _Backend) -> None:
    spool = await backend.open(max_bytes=10_000, dedup_window=0)
    try:
        # 1 000 bytes of share: each of these costs ~170
        rejects = [Reject(raw=f"r{i}", error="x" * 40, source="http") for i in range(10)]
        result = await spool.append([], rejects)
        assert result.dead_lettered + result.not_kept == 10 and result.not_kept > 0
        kept = [d.body for d in await backend.admin(spool).list_dead_letters()]
        assert kept == [f"r{i}".encode() for i in range(result.dead_lettered)]
    finally:
        await spool.close()


async def test_dead_letters_record_the_event_and_its_history(
    spool: Spool, backend: _Backend
) -> None:
    await spool.append([ev(1, source="syslog")])
    [item] = await spool.lease(1)
    await spool.release([Release(item.id, 0.0, "first try failed")])
    [item] = await spool.lease(1)
    await spool.dead_letter([DeadLetter(item.id, "rejected", "refused for good")])
    assert spool.stats().events == 0
    [record] = await backend.admin(spool).list_dead_letters()
    assert (record.event_id, record.reason, record.source) == (item.id, "rejected", "syslog")
    assert (record.first_error, record.last_error) == ("first try failed", "refused for good")
    assert record.attempts == 2 and record.body == ev(1).body
    assert record.first_attempt_at is not None and record.dead_at >= record.received_at


async def test_admin_replays_and_purges_dead_letters(spool: Spool, backend: _Backend) -> None:
    admin = backend.admin(spool)
    await spool.append([ev(i) for i in range(3)], [Reject("junk", "bad", "http")])
    items = await spool.lease(3)
    await spool.dead_letter([DeadLetter(e.id, "rejected", "no") for e in items[:2]])
    records = await admin.list_dead_letters()
    assert len(records) == 3
    assert len(await admin.list_dead_letters(limit=2)) == 2

    def prepare(body: bytes) -> bytes:
        if body == b"junk":
            raise ValueError("not an event")
        return body

    junk_id = next(r.id for r in records if r.body == b"junk")
    replayed, skipped = await admin.replay_dead_letters(None, prepare)
    assert sorted(replayed) == sorted(r.id for r in records if r.id != junk_id)
    assert skipped == {junk_id: "not an event"}
    # replayed events are new events: leased again, after what was waiting
    again = await spool.lease(10)
    assert sorted(bodies(again)) == sorted([ev(0).body, ev(1).body])
    assert all(e.attempts == 0 for e in again)
    _, missing = await admin.replay_dead_letters([999_999], prepare)
    assert missing == {999_999: "no such dead letter"}

    assert await admin.purge_dead_letters(3600.0) == 0  # none dead that long
    assert await admin.purge_dead_letters(-1.0) == 1
    assert await admin.list_dead_letters() == []
    await eventually(lambda: spool.stats().dead_letters == 0, 10, "the counters to follow")


async def test_admin_stats_per_source_and_check(spool: Spool, backend: _Backend) -> None:
    admin = backend.admin(spool)
    await spool.append([ev(1, source="http"), ev(2, source="http"), ev(3, source="syslog")])
    [item, *_] = await spool.lease(1)
    await spool.dead_letter([DeadLetter(item.id, "rejected", "no")])

    async def settled() -> bool:
        # a replicated backend removes the dead-lettered event from its stream a moment after
        # the dead letter is stored (the removal is an acknowledgement the servers apply)
        stats = await admin.stats()
        return (stats.events, stats.dead_letters) == (2, 1)

    await eventually(settled, 10, "2 events and 1 dead letter in the admin's stats")
    stats = await admin.stats()
    backend.check_bytes(stats.bytes, [len(ev(2).body), len(ev(3).body)])
    assert stats.oldest_received_at is not None
    assert await admin.per_source() == {
        "http": {"events": 1, "bytes": len(ev(2).body), "dead_letters": 1},
        "syslog": {"events": 1, "bytes": len(ev(3).body), "dead_letters": 0},
    }
    assert await admin.check() == []


async def test_stats_of_an_empty_spool(spool: Spool) -> None:
    stats = spool.stats()
    assert (stats.events, stats.bytes, stats.dead_letters, stats.dead_letter_bytes) == (0, 0, 0, 0)
    assert stats.oldest_received_at is None
    assert stats.capacity_bytes == GiB
    assert stats.refusing is None and stats.corrupt is None and stats.set_aside == []
    assert spool.alive()


async def test_a_closed_spool_refuses(backend: _Backend) -> None:
    spool = await backend.open(max_bytes=GiB, dedup_window=0)
    await spool.close()
    with pytest.raises(SpoolUnavailable):
        await spool.append([ev(1)])
    await spool.close()  # twice is fine


def test_an_unknown_backend_is_one_line_naming_the_choices() -> None:
    with pytest.raises(ConfigError) as caught:
        registered_backend("jetstrem")
    message = str(caught.value)
    assert "\n" not in message
    assert all(f'"{name}"' in message for name in BACKENDS) and '"jetstrem"' in message


def test_backends_are_found_from_their_strings() -> None:
    assert import_from_string(BACKENDS["memory"].spool) is MemorySpool
    assert import_from_string(BACKENDS["sqlite"].spool) is SqliteSpool
    assert import_from_string("relay.spool.sqlite.admin:SqliteAdmin") is SqliteAdmin
    for bad in ("relay.spool.memory", "relay.spool.memory:Nope", "relay.spool.nope:X"):
        with pytest.raises(ImportError):
            import_from_string(bad)
