"""The jetstream backend beyond the contract: several relays on one stream, leases kept alive,
a stream with other settings, unreachable servers, and a cluster that goes away and comes back.
Real nats-server processes (a 3-node cluster on loopback), no mocks."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from relay.errors import UserError
from relay.spool import Incoming, SpoolRefused, open_spool
from tests.helpers import eventually, free_port
from tests.helpers.nats import NatsCluster

GiB = 1 << 30


def ev(n: int) -> Incoming:
    return Incoming(f'{{"n":{n}}}'.encode(), "test")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[NatsCluster]:
    with NatsCluster(tmp_path_factory.mktemp("nats")) as started:
        yield started


def options(cluster: NatsCluster, **changes) -> dict:
    name = f"J{uuid.uuid4().hex[:12].upper()}"
    return {
        "servers": cluster.urls,
        "stream": name,
        "subject": f"j.{name.lower()}",
        "consumer": "delivery",
        "replicas": 3,
        "connect_timeout": 5.0,
        "ack_wait": 30.0,
        **changes,
    }


@pytest.fixture
async def pair(cluster: NatsCluster) -> AsyncIterator[tuple]:
    """Two relays' spools on one stream and consumer."""
    shared = options(cluster)
    a = await open_spool("jetstream", "a", max_bytes=GiB, dedup_window=86400.0, options=shared)
    b = await open_spool("jetstream", "b", max_bytes=GiB, dedup_window=86400.0, options=shared)
    yield a, b
    await a.close()
    await b.close()


async def test_two_relays_share_the_stream_and_store_a_retried_event_once(pair) -> None:
    a, b = pair
    assert (await a.append([ev(1), ev(2)])).accepted == 2
    # the producer's retry reaches the other relay: stored once, acknowledged as a duplicate
    result = await b.append([ev(1), ev(3)])
    assert (result.accepted, result.duplicates) == (1, 1)
    got_a = await a.lease(2)
    got_b = await b.lease(10, wait=2.0)
    # each event to one relay only
    assert sorted(e.body for e in got_a + got_b) == sorted([ev(1).body, ev(2).body, ev(3).body])
    await a.ack([e.id for e in got_a])
    await b.ack([e.id for e in got_b])
    await eventually(lambda: a.stats().events == 0, 10, "the stream to empty")


async def test_a_closing_relay_hands_its_leases_to_another_at_once(pair) -> None:
    a, b = pair
    await a.append([ev(i) for i in range(5)])
    leased = await a.lease(5)
    assert len(leased) == 5
    assert await b.lease(5) == []  # leased by a: not handed out twice
    await a.close()  # a stopping relay gives back what it held, without waiting for ack_wait
    again = []

    async def all_back() -> bool:
        again.extend(await b.lease(5, wait=0.5))
        return len(again) == 5

    await eventually(all_back, 10, "the other relay to get the events")
    assert sorted(e.body for e in again) == sorted(e.body for e in leased)


async def test_a_held_event_is_kept_in_progress_beyond_ack_wait(cluster: NatsCluster) -> None:
    shared = options(cluster, ack_wait=1.0)
    a = await open_spool("jetstream", "a", max_bytes=GiB, dedup_window=0, options=shared)
    b = await open_spool("jetstream", "b", max_bytes=GiB, dedup_window=0, options=shared)
    try:
        await a.append([ev(1)])
        [item] = await a.lease(1)
        # three ack_waits: without in_progress the server would have handed it to b
        assert await b.lease(1, wait=3.0) == []
        await a.ack([item.id])
        await eventually(lambda: a.stats().events == 0, 10, "the ack to be applied")
        assert await b.lease(1, wait=0.5) == []
    finally:
        await a.close()
        await b.close()


async def test_a_stream_with_other_settings_stops_start_up_naming_the_difference(
    cluster: NatsCluster,
) -> None:
    shared = options(cluster)
    first = await open_spool("jetstream", "a", max_bytes=GiB, dedup_window=60.0, options=shared)
    await first.close()
    with pytest.raises(UserError) as caught:
        await open_spool("jetstream", "b", max_bytes=2 * GiB, dedup_window=60.0, options=shared)
    message = str(caught.value)
    assert "\n" not in message
    assert "max_bytes" in message and "spool.max_bytes" in message and shared["stream"] in message


async def test_unreachable_servers_are_one_line_without_the_password(tmp_path: Path) -> None:
    port = free_port()
    shared = {"servers": [f"nats://relay:s3cret@127.0.0.1:{port}"], "connect_timeout": 1.0}
    with pytest.raises(UserError) as caught:
        await open_spool("jetstream", "x", max_bytes=GiB, dedup_window=0, options=shared)
    message = str(caught.value)
    assert "\n" not in message and "s3cret" not in message
    assert f"127.0.0.1:{port}" in message and "spool.jetstream.servers" in message


@pytest.mark.e2e
async def test_a_cluster_that_goes_away_refuses_then_recovers_by_itself(tmp_path: Path) -> None:
    with NatsCluster(tmp_path / "nats") as cluster:
        spool = await open_spool(
            "jetstream", "a", max_bytes=GiB, dedup_window=86400.0, options=options(cluster)
        )
        try:
            await spool.append([ev(1)])
            for node in cluster.nodes:
                node.kill()
            await eventually(lambda: spool.refusing() is not None, 20, "the spool to refuse")
            assert "\n" not in spool.refusing()
            with pytest.raises(SpoolRefused):
                await spool.append([ev(2)])
            for node in cluster.nodes:
                node.start()
            cluster.wait_ready()

            async def stored() -> bool:
                try:
                    return (await spool.append([ev(2)])).accepted == 1
                except SpoolRefused:
                    return False

            await eventually(stored, 60, "appends to work again")
            await eventually(lambda: spool.refusing() is None, 30, "the spool to be ready")
            items = []

            async def both() -> bool:
                items.extend(await spool.lease(10, wait=0.5))
                return len(items) >= 2

            await eventually(both, 30, "both events to be leased")
            assert sorted(e.body for e in items) == [ev(1).body, ev(2).body]
        finally:
            await asyncio.wait_for(spool.close(), 30)
