"""The jetstream backend's admin side (`relay spool`, `relay dlq`) against a real three-node
JetStream cluster: streams filled here with nats-py in the design's format
(`relay.spool.jetstream`), then read and changed through `JetStreamAdmin`.

Each test has streams of its own (uuid-named) on one cluster shared by the module's tests.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from relay.errors import UserError
from relay.spool import SpoolUnreadable
from relay.spool.api import INVALID_SHARE
from relay.spool.jetstream import records, streams
from relay.spool.jetstream.admin import JetStreamAdmin, replay_id
from relay.spool.jetstream.options import JetStreamOptions
from tests.helpers import eventually, free_port
from tests.helpers.nats import NatsCluster

MAX_BYTES = 10_000_000  # small: every stream reserves its max_bytes on the servers


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with NatsCluster(tmp_path_factory.mktemp("nats")) as started:
        yield started


@dataclass
class Layout:
    """One spool's streams, consumer and bucket, and a connection to fill them."""

    options: dict[str, Any]
    opts: JetStreamOptions
    nc: Client
    js: JetStreamContext

    def admin(self, max_bytes: int = MAX_BYTES, **kw: Any) -> JetStreamAdmin:
        return JetStreamAdmin("ignored", max_bytes=max_bytes, options=self.options, **kw)

    async def event(self, body: bytes, source: str = "http", msg_id: str | None = None) -> int:
        ack = await self.js.publish(
            self.opts.subject, body, headers=records.event_headers(source, msg_id)
        )
        return ack.seq

    async def dead(self, body: bytes, source: str = "http", **meta: Any) -> int:
        """A dead letter of an event the upstream refused; its id as `relay dlq` shows it."""
        fields: dict[str, Any] = {
            "event_id": 7,
            "reason": "rejected",
            "attempts": 2,
            "first_error": "first",
            "last_error": "last",
            "received_at": time.time() - 60,
            "first_attempt_at": time.time() - 50,
        }
        fields.update(meta)
        ack = await self.js.publish(
            self.opts.dlq_subject,
            body,
            headers=records.dead_letter_headers(source=source, **fields),
        )
        return records.dead_letter_id(ack.seq, invalid=False)

    async def invalid(self, raw: bytes, source: str = "tcp", error: str = "bad JSON") -> int:
        """Input that was never an event, kept at ingest; its id as `relay dlq` shows it."""
        headers = records.dead_letter_headers(
            source=source,
            event_id=None,
            reason="invalid",
            attempts=0,
            first_error=error,
            last_error=error,
            received_at=time.time(),
            first_attempt_at=None,
        )
        ack = await self.js.publish(self.opts.invalid_subject, raw, headers=headers)
        return records.dead_letter_id(ack.seq, invalid=True)

    async def queue(self) -> list[tuple[bytes, dict[str, str]]]:
        """(body, headers) of every message in the queue stream, in order."""
        out = []
        state = (await self.js.stream_info(self.opts.stream)).state
        for seq in range(state.first_seq, state.last_seq + 1):
            try:
                msg = await self.js.get_msg(self.opts.stream, seq)
            except NotFoundError:
                continue
            out.append((msg.data or b"", msg.headers or {}))
        return out


async def create(
    js: JetStreamContext, opts: JetStreamOptions, max_bytes: int, window: float
) -> None:
    """The design's streams, consumer and bucket, as a relay creates them. Right after a cluster
    has formed its first stream may time out (its peers are not all known yet): try again."""

    async def created() -> bool:
        try:
            await streams.ensure_all(js, opts, max_bytes, window)
        except UserError:
            return False
        return True

    await eventually(created, 30, f"the cluster to create the streams of {opts.stream}")


@pytest.fixture
async def layout(cluster: NatsCluster) -> AsyncIterator[Layout]:
    name = f"T{uuid.uuid4().hex[:12].upper()}"
    options = {
        "servers": cluster.urls,
        "stream": name,
        "subject": f"t.{name.lower()}",
        "consumer": f"{name.lower()}-delivery",
        "replicas": 3,
        "connect_timeout": 5.0,
    }
    opts = JetStreamOptions.from_mapping(options)
    nc = await nats.connect(servers=cluster.urls)
    js = nc.jetstream(timeout=10)
    await create(js, opts, MAX_BYTES, 3600.0)
    yield Layout(options, opts, nc, js)
    await nc.close()


async def test_stats_count_both_dead_letter_streams(layout: Layout) -> None:
    before = time.time()
    for i in range(3):
        await layout.event(f'{{"n":{i}}}'.encode())
    await layout.dead(b'{"n":9}')
    await layout.invalid(b"not json")
    stats = await layout.admin().stats()
    queue = (await layout.js.stream_info(layout.opts.stream)).state
    invalid = (await layout.js.stream_info(layout.opts.invalid_stream)).state
    dead = (await layout.js.stream_info(layout.opts.dlq_stream)).state
    assert (stats.events, stats.dead_letters) == (3, 2)
    # what JetStream stores: more than the bodies (headers, overhead)
    assert stats.bytes == queue.bytes > sum(len(f'{{"n":{i}}}') for i in range(3))
    assert stats.dead_letter_bytes == dead.bytes + invalid.bytes
    assert stats.invalid_bytes == invalid.bytes > len("not json")
    assert stats.capacity_bytes == MAX_BYTES
    assert stats.invalid_capacity_bytes == int(INVALID_SHARE * MAX_BYTES)
    assert stats.oldest_received_at is not None
    assert before - 1 <= stats.oldest_received_at <= time.time() + 1
    assert stats.set_aside == [] and stats.refusing is None


async def test_stats_of_an_empty_spool_and_the_oldest_after_deletes(layout: Layout) -> None:
    admin = layout.admin()
    empty = await admin.stats()
    assert (empty.events, empty.bytes, empty.dead_letters, empty.oldest_received_at) == (
        0,
        0,
        0,
        None,
    )
    first = await layout.event(b"1")
    await layout.event(b"2")
    second = (await layout.js.get_msg(layout.opts.stream, first + 1)).time
    await layout.js.delete_msg(layout.opts.stream, first)  # as an ack does
    stats = await admin.stats()
    assert stats.events == 1
    assert stats.oldest_received_at == pytest.approx(records.stream_time(second), abs=1e-5)


async def test_per_source_counts_body_bytes_exactly(layout: Layout) -> None:
    await layout.event(b"a" * 10, "http")
    gone = await layout.event(b"b" * 20, "http")
    await layout.event(b"c" * 30, "syslog")
    await layout.event(b"d" * 40, "http")
    await layout.js.delete_msg(layout.opts.stream, gone)  # a gap the walk must step over
    await layout.dead(b"x", "http")
    await layout.dead(b"y", "rsocket")
    await layout.invalid(b"z", "tcp")
    assert await layout.admin().per_source() == {
        "http": {"events": 2, "bytes": 50, "dead_letters": 1},
        "syslog": {"events": 1, "bytes": 30, "dead_letters": 0},
        "rsocket": {"events": 0, "bytes": 0, "dead_letters": 1},
        "tcp": {"events": 0, "bytes": 0, "dead_letters": 1},
    }


async def test_list_merges_both_streams_oldest_first_with_ids(layout: Layout) -> None:
    made = [
        await layout.dead(b"d1", "http", event_id=11),
        await layout.invalid(b"i1", "tcp", error="bad"),
        await layout.invalid(b"i2", "tcp"),
        await layout.dead(b"d2", "syslog", event_id=12),
    ]
    # dead-letter ids: 2 x seq in the DLQ stream, 2 x seq + 1 in the invalid stream
    assert made == [2, 3, 5, 4]
    admin = layout.admin()
    listed = await admin.list_dead_letters()
    assert [r.id for r in listed] == made
    assert [r.body for r in listed] == [b"d1", b"i1", b"i2", b"d2"]
    assert [r.dead_at for r in listed] == sorted(r.dead_at for r in listed)
    d1, i1 = listed[0], listed[1]
    assert (d1.event_id, d1.reason, d1.source, d1.attempts) == (11, "rejected", "http", 2)
    assert (d1.first_error, d1.last_error) == ("first", "last")
    assert d1.first_attempt_at is not None and d1.received_at < d1.dead_at
    assert (i1.event_id, i1.reason, i1.source, i1.attempts) == (None, "invalid", "tcp", 0)
    assert (i1.first_error, i1.last_error) == ("bad", "bad")
    assert [r.id for r in await admin.list_dead_letters(limit=3)] == made[:3]
    assert await admin.list_dead_letters(limit=0) == []


async def test_replay_queues_bodies_with_their_source_and_deletes_the_dead_letters(
    layout: Layout,
) -> None:
    await layout.event(b"waiting", "http")
    d1 = await layout.dead(b'{"n":1}', "syslog")
    junk = await layout.invalid(b"junk", "tcp")
    d2 = await layout.dead(b'{"n":2}', "http")

    def prepare(body: bytes) -> bytes:
        if body == b"junk":
            raise ValueError("not an event")
        return body + b" "

    admin = layout.admin()
    listed = {r.id: r for r in await admin.list_dead_letters()}
    replayed, skipped = await admin.replay_dead_letters(None, prepare)
    assert replayed == [d1, d2]
    assert skipped == {junk: "not an event"}
    stream = layout.opts.stream
    id1, id2 = replay_id(stream, listed[d1]), replay_id(stream, listed[d2])
    assert await layout.queue() == [
        (b"waiting", {records.SOURCE: "http"}),
        (b'{"n":1} ', {records.SOURCE: "syslog", records.MSG_ID: id1}),
        (b'{"n":2} ', {records.SOURCE: "http", records.MSG_ID: id2}),
    ]
    assert [r.id for r in await admin.list_dead_letters()] == [junk]
    _, missing = await admin.replay_dead_letters([d1, 999_999, 0, -3], prepare)
    assert missing == {d1: "no such dead letter", 999_999: "no such dead letter"} | {
        0: "no such dead letter",
        -3: "no such dead letter",
    }


async def test_replay_of_an_event_still_in_the_dedup_window_is_stored(layout: Layout) -> None:
    # the event went in with its digest as msg id, then to the dead letters: a replay with the
    # same msg id would be dropped as a duplicate, and the dead letter deleted all the same
    await layout.event(b'{"n":1}', "http", msg_id="12345")
    await layout.js.delete_msg(layout.opts.stream, 1)
    dl = await layout.dead(b'{"n":1}', "http")
    replayed, _ = await layout.admin().replay_dead_letters([dl], lambda body: body)
    assert replayed == [dl]
    assert [body for body, _ in await layout.queue()] == [b'{"n":1}']


async def test_a_replay_that_died_before_the_delete_stores_the_event_once(
    layout: Layout,
) -> None:
    dl = await layout.dead(b'{"n":1}', "http")
    [record] = await layout.admin().list_dead_letters()
    # the first run published the event and died before deleting the dead letter
    await layout.event(b'{"n":1}', "http", msg_id=replay_id(layout.opts.stream, record))
    replayed, skipped = await layout.admin().replay_dead_letters([dl], lambda body: body)
    assert (replayed, skipped) == ([dl], {})
    assert [body for body, _ in await layout.queue()] == [b'{"n":1}']
    assert await layout.admin().list_dead_letters() == []


async def test_replay_into_a_full_queue_leaves_the_dead_letters(cluster: NatsCluster) -> None:
    name = f"T{uuid.uuid4().hex[:12].upper()}"
    options = {"servers": cluster.urls, "stream": name, "subject": f"t.{name.lower()}"}
    opts = JetStreamOptions.from_mapping(options)
    nc = await nats.connect(servers=cluster.urls)
    try:
        js = nc.jetstream(timeout=10)
        await create(js, opts, 4000, 0)
        await js.publish(opts.subject, b"x" * 2500, headers=records.event_headers("http", None))
        headers = records.dead_letter_headers(
            source="http",
            event_id=1,
            reason="rejected",
            attempts=1,
            first_error="e",
            last_error="e",
            received_at=time.time(),
            first_attempt_at=None,
        )
        for _ in range(2):
            await js.publish(opts.dlq_subject, b"y" * 1600, headers=headers)
        admin = JetStreamAdmin("", max_bytes=4000, options=options)
        replayed, skipped = await admin.replay_dead_letters(None, lambda body: body)
        assert replayed == []
        [(dl_id, why)] = skipped.items()
        assert dl_id == 2 and "the queue refused it" in why and "\n" not in why
        assert len(await admin.list_dead_letters()) == 2
    finally:
        await nc.close()


async def test_purge_deletes_only_what_died_before_the_cutoff(layout: Layout) -> None:
    made = [
        await layout.dead(b"d0"),
        await layout.invalid(b"i0"),
        await layout.dead(b"d1"),
        await layout.dead(b"d2"),
        await layout.invalid(b"i1"),
        await layout.dead(b"d3"),
        await layout.dead(b"d4"),
        await layout.invalid(b"i2"),
    ]
    times = {r.id: r.dead_at for r in await layout.admin().list_dead_letters()}
    # a gap among the old ones, as a replay leaves
    await layout.js.delete_msg(layout.opts.dlq_stream, made[2] // 2)
    # the cutoff between d3 and d4: d0, i0, d2, i1 and d3 died before it
    cutoff = (times[made[5]] + times[made[6]]) / 2
    admin = layout.admin(clock=lambda: cutoff + 100.0)
    assert await admin.purge_dead_letters(3600.0) == 0
    assert await admin.purge_dead_letters(100.0) == 5
    assert [r.id for r in await layout.admin().list_dead_letters()] == made[6:]
    # a purge keeps what died after its cutoff, also what died after it began
    await layout.dead(b"later")
    assert await layout.admin(clock=lambda: cutoff + 100.0).purge_dead_letters(100.0) == 0
    assert await layout.admin().purge_dead_letters(-1.0) == 3
    assert await layout.admin().list_dead_letters() == []


async def test_check_of_a_sound_spool(layout: Layout) -> None:
    await layout.event(b"1")
    await layout.dead(b"2")
    assert await layout.admin().check() == []


async def test_check_names_what_is_missing_or_different(layout: Layout) -> None:
    opts = layout.opts
    await layout.js.delete_consumer(opts.stream, opts.consumer)
    await layout.js.delete_stream(opts.invalid_stream)
    await layout.js.delete_stream(f"KV_{opts.attempts_bucket}")
    problems = await layout.admin(max_bytes=MAX_BYTES * 2).check()
    text = "\n".join(problems)
    assert f"consumer {opts.consumer} on stream {opts.stream} does not exist" in text
    assert f"stream {opts.invalid_stream} does not exist" in text
    assert f"key-value bucket KV_{opts.attempts_bucket} does not exist" in text
    # the configured max_bytes differs from the streams'
    assert f"stream {opts.stream}: max_bytes is {MAX_BYTES}, spool.max_bytes asks" in text
    assert f"stream {opts.dlq_stream}: max_bytes is {MAX_BYTES}" in text
    assert len(problems) == 5 and all("\n" not in p for p in problems)


async def test_check_of_a_spool_with_messages_held_by_a_relay(layout: Layout) -> None:
    # held (fetched, not acked) messages are still in the stream: nothing to report. (The
    # check for more held than stored finds what the server should never show: it keeps the
    # consumer in step on deletes and purges, so no test here can make it happen.)
    opts = layout.opts
    for i in range(3):
        await layout.event(str(i).encode())
    sub = await layout.js.pull_subscribe_bind(opts.consumer, opts.stream)
    assert len(await sub.fetch(2, timeout=5)) == 2
    info = await layout.js.consumer_info(opts.stream, opts.consumer)
    assert info.num_ack_pending == 2
    assert await layout.admin().check() == []
    assert (await layout.admin().stats()).events == 3


async def test_every_call_but_check_refuses_a_spool_that_does_not_exist(
    cluster: NatsCluster,
) -> None:
    options = {"servers": cluster.urls, "stream": f"NOPE{uuid.uuid4().hex[:8].upper()}"}
    admin = JetStreamAdmin("", max_bytes=MAX_BYTES, options=options)
    calls = [
        admin.stats(),
        admin.per_source(),
        admin.list_dead_letters(),
        admin.replay_dead_letters(None, lambda body: body),
        admin.purge_dead_letters(0),
    ]
    for call in calls:
        with pytest.raises(SpoolUnreadable) as caught:
            await call
        message = str(caught.value)
        assert "does not exist" in message and options["stream"] in message
        assert "\n" not in message
    problems = await admin.check()
    assert len(problems) >= 4 and all("does not exist" in p for p in problems)
    # the admin created nothing
    nc = await nats.connect(servers=cluster.urls)
    try:
        with pytest.raises(NotFoundError):
            await nc.jetstream().stream_info(options["stream"])
    finally:
        await nc.close()


async def test_no_server_is_one_line_without_the_password() -> None:
    port = free_port()  # nothing listens there
    options = {
        "servers": [f"nats://relay:s3cret-pw@127.0.0.1:{port}"],
        "connect_timeout": 1.0,
    }
    admin = JetStreamAdmin("", max_bytes=MAX_BYTES, options=options)
    for call in (admin.stats(), admin.check(), admin.list_dead_letters()):
        with pytest.raises(SpoolUnreadable) as caught:
            await call
        message = str(caught.value)
        assert "s3cret-pw" not in message and "\n" not in message
        assert f"127.0.0.1:{port}" in message and "cannot connect to NATS" in message


async def test_errors_from_a_running_server_never_show_the_password(
    cluster: NatsCluster,
) -> None:
    # the test servers take any user: the password reaches them and must not come back out
    url = cluster.urls[0].replace("nats://", "nats://relay:s3cret-pw@")
    options = {"servers": [url], "stream": f"NOPE{uuid.uuid4().hex[:8].upper()}"}
    with pytest.raises(SpoolUnreadable) as caught:
        await JetStreamAdmin("", max_bytes=MAX_BYTES, options=options).stats()
    assert "s3cret-pw" not in str(caught.value) and "\n" not in str(caught.value)


async def test_salvage_says_there_is_nothing_to_salvage(layout: Layout) -> None:
    with pytest.raises(SpoolUnreadable, match="sets nothing aside"):
        await layout.admin().salvage("quarantine/x")


@pytest.mark.e2e
async def test_check_names_an_offline_replica(tmp_path: Path) -> None:
    with NatsCluster(tmp_path / "nats") as own:
        options = {"servers": own.urls[:2], "stream": "OFFLINE", "subject": "t.offline"}
        opts = JetStreamOptions.from_mapping(options)
        nc = await nats.connect(servers=own.urls[:2])
        try:
            await create(nc.jetstream(timeout=10), opts, MAX_BYTES, 0)
        finally:
            await nc.close()
        admin = JetStreamAdmin("", max_bytes=MAX_BYTES, options=options)
        assert await admin.check() == []
        own.kill("n3")
        found: list[str] = []

        async def named() -> bool:
            found[:] = await admin.check()
            return any("replica on server n3 is offline" in p for p in found)

        await eventually(named, 30, "check to name the replica on n3", lambda: "\n".join(found))
