"""Two relays sharing one replicated spool (`spool.backend = "jetstream"`, issue 12) on a real
3-node JetStream cluster, delivering to the rsocket-js status server (tests/node/), while a relay
and then the node leading the stream are SIGKILLed and restarted under load.

Nothing acknowledged may be lost: every event a relay answered 200 for reaches the peer at least
once. Extra copies are allowed (a relay killed with events in flight, an event redelivered after
its ack wait) and reported. The same event sent to both relays is stored once."""

from __future__ import annotations

import asyncio
import re
import threading
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from tests.helpers import (
    FAST_RETRY,
    Ledger,
    NatsCluster,
    NodePeer,
    batches,
    eventually,
    jetstream_env,
    kill_stream_leader,
    make_event,
    node_peer_missing,
    post,
    produce,
    require_jetstream,
    spool_stats,
    stream_info,
    wait_until,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.interop,
    pytest.mark.skipif(node_peer_missing() is not None, reason=str(node_peer_missing())),
]

STREAM = "RELAY_SHARED"
EVENTS = 3000
SIZES = (1, 25, 1, 40)  # single JSON POSTs and NDJSON batches, in turn
RATE = 200.0  # events/s over all producers: the load lasts through both faults
RELAY_KILL_AT = EVENTS // 10  # acknowledged events before the relay is killed
WHILE_LEADER_DEAD = 200  # events acknowledged by the two remaining nodes before the restart


@pytest.fixture
def cluster(tmp_path: Path):
    require_jetstream()
    nats = NatsCluster(tmp_path / "nats").start()
    yield nats
    nats.stop()


@pytest.fixture
def peer(upstream_factory, tmp_path: Path):
    up = upstream_factory()  # its Maskinporten stand-in issues the tokens the peer checks
    node = NodePeer(
        up.maskinporten_url + "/jwk", tmp_path / "received.jsonl", tmp_path / "node.log"
    )
    node.start()
    yield up, node
    node.stop()


def relay_env(cluster: NatsCluster, peer_port: int) -> dict[str, str]:
    return {
        **FAST_RETRY,
        **jetstream_env(cluster, stream=STREAM),
        "RELAY_UPSTREAM__HOST": "127.0.0.1",
        "RELAY_UPSTREAM__PORT": str(peer_port),
        # ack_wait is twice this: events held by a killed relay go to the other one soon
        "RELAY_UPSTREAM__REQUEST_TIMEOUT": "2s",
    }


def start_both(relays) -> None:
    """Both at once, as two replicas of a deployment start: each may find the stream and the
    consumer missing and create them."""
    errors: list[BaseException] = []

    def start(relay) -> None:
        try:
            relay.start(60)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in this thread
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(r,)) for r in relays]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


async def test_two_relays_share_the_stream_through_relay_and_leader_kills(
    cluster: NatsCluster, peer, relay_factory, tmp_path: Path, record_property
) -> None:
    up, node = peer
    env = relay_env(cluster, node.port)
    relays = [relay_factory(spool=tmp_path / name, env=env, config=up.config) for name in "ab"]
    start_both(relays)

    # -- the same events sent to both relays are stored once --------------------------------
    before = (await stream_info(cluster.urls, STREAM)).state.last_seq
    one = make_event()
    assert answer(post(relays[0].url, one)) == {"accepted": 1}
    assert answer(post(relays[1].url, one)) == {"duplicates": 1}
    five = [make_event() for _ in range(5)]
    answers = [ndjson(relay.url, five) for relay in relays]
    assert answers[0] == {"accepted": 5, "duplicates": 0, "dead_lettered": 0, "errors": []}
    assert answers[1] == {"accepted": 0, "duplicates": 5, "dead_lettered": 0, "errors": []}
    after = (await stream_info(cluster.urls, STREAM)).state.last_seq
    assert after - before == 6, f"6 distinct events took {after - before} stream messages"

    # -- thousands more, through a relay kill and a stream leader kill ------------------------
    events = [make_event() for _ in range(EVENTS)]
    ledger = Ledger()
    ledger.acked.update(e["message_id"] for e in [one, *five])
    producing = asyncio.create_task(produce(relays, batches(events, SIZES), ledger, rate=RATE))
    faults = await inject(cluster, relays, ledger, producing)
    await asyncio.wait_for(producing, 120)
    assert ledger.anomalies == []
    assert len(ledger.acked) == EVENTS + 6

    def missing() -> set[str]:
        return ledger.acked - set(node.received())

    def detail() -> str:
        gone = missing()
        logs = "\n".join(f"--- relay {r.spool.name}\n{r.output()[-3000:]}" for r in relays)
        return f"{len(gone)} acknowledged events not at the peer, e.g. {sorted(gone)[:3]}\n{logs}"

    wait_until(lambda: not missing(), 60, "every acknowledged event at the peer", detail)

    received = node.received()
    extra = {m: n - 1 for m, n in received.items() if n > 1}
    summary = (
        f"{len(ledger.acked)} acknowledged, {len(received)} delivered, {len(extra)} delivered "
        f"more than once ({sum(extra.values())} extra copies); HTTP answers "
        f"{dict(ledger.statuses())}; faults: {faults}"
    )
    print(summary)
    record_property("jetstream_shared", summary)
    sent = {e["message_id"] for e in [*events, one, *five]}
    assert set(received) <= sent, "the peer got events no producer sent"
    records = node.records()
    assert [r["dropped"] for r in records if "dropped" in r] == []
    # both relays took events from the shared consumer (a's count is since its restart)
    assert [delivered(relay) > 0 for relay in relays] == [True, True]
    assert [spool_stats(relay)["dead_letters"] for relay in relays] == [0, 0]
    assert "rejected:" not in node.diagnostics(), "the peer refused a request (a token?)"


def delivered(relay) -> float:
    """relay_delivered_events_total of the relay process running now."""
    with urllib.request.urlopen(relay.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    found = re.search(r"^relay_delivered_events_total (\S+)$", text, re.MULTILINE)
    assert found, "no relay_delivered_events_total in /metrics"
    return float(found.group(1))


def answer(got: tuple[int, bytes]) -> dict:
    status, body = got
    assert status == 200, f"{status}: {body[:300]!r}"
    return orjson.loads(body)


def ndjson(url: str, events: list[dict]) -> dict:
    body = b"\n".join(orjson.dumps(e) for e in events)
    request = urllib.request.Request(
        url + "/api/status", data=body, headers={"Content-Type": "application/x-ndjson"}
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        return orjson.loads(r.read())


async def inject(
    cluster: NatsCluster, relays, ledger: Ledger, producing: asyncio.Task
) -> list[str]:
    """SIGKILL relay a and restart it; once it is back, SIGKILL the stream's leader, let the two
    others take events, restart it. Each fault begins while the producers are still sending."""
    done: list[str] = []
    t0 = time.monotonic()

    def note(what: str) -> None:
        done.append(f"{time.monotonic() - t0:.1f} s: {what} at {len(ledger.acked)} acknowledged")

    async def acked(n: int, what: str) -> None:
        await eventually(lambda: len(ledger.acked) >= n, 60, what, lambda: str(ledger.statuses()))
        assert not producing.done(), f"the load was over before {what}"

    await acked(RELAY_KILL_AT, f"{RELAY_KILL_AT} events acknowledged")
    relays[0].kill()
    note("relay a SIGKILLed")
    await asyncio.to_thread(relays[0].start, 60)
    note("relay a up again")

    assert not producing.done(), "the load was over before relay a was back"
    node = await kill_stream_leader(cluster, STREAM)
    at = len(ledger.acked)
    note(f"stream leader {node.name} SIGKILLed")
    await eventually(
        lambda: len(ledger.acked) >= min(at + WHILE_LEADER_DEAD, EVENTS + 6),
        60,
        "events acknowledged while the old stream leader is dead",
        lambda: f"{len(ledger.acked)} acknowledged; {ledger.statuses()}",
    )
    await asyncio.to_thread(cluster.restart, node.name)
    note(f"{node.name} restarted")
    return done
