"""The whole NATS cluster under a relay's jetstream spool (issue 12) SIGKILLed under load: while
no node runs, the relay says it is not ready and refuses events (503, never 200); once the nodes
are back it recovers by itself, and every event it acknowledged is delivered."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.helpers import (
    FAST_RETRY,
    Ledger,
    NatsCluster,
    batches,
    eventually,
    jetstream_env,
    make_event,
    produce,
    received_ids,
    require_jetstream,
    spool_stats,
    wait_until,
)

pytestmark = pytest.mark.e2e

STREAM = "RELAY_FAULTS"
EVENTS = 2000
SIZES = (1, 20, 1, 30)
RATE = 250.0
KILL_AT = EVENTS // 4  # events acknowledged before every node is killed
REFUSED_WHILE_DOWN = 40  # 503s the producers get before the nodes come back (~0.5 s+)
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def cluster(tmp_path: Path):
    require_jetstream()
    nats = NatsCluster(tmp_path / "nats").start()
    yield nats
    nats.stop()


async def get(url: str) -> tuple[int, str]:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(url) as r,
        ):
            return r.status, await r.text()
    except (aiohttp.ClientError, TimeoutError):
        return 0, ""


async def test_whole_cluster_killed_refuses_then_recovers_and_delivers_everything(
    cluster: NatsCluster, upstream_factory, relay_factory, record_property
) -> None:
    up = upstream_factory()
    env = {
        **FAST_RETRY,
        **jetstream_env(cluster, stream=STREAM),
        "RELAY_UPSTREAM__REQUEST_TIMEOUT": "2s",
    }
    relay = relay_factory(config=up.config, env=env).start(60)
    events = [make_event() for _ in range(EVENTS)]
    ledger = Ledger()
    producing = asyncio.create_task(produce([relay], batches(events, SIZES), ledger, rate=RATE))

    await eventually(lambda: len(ledger.acked) >= KILL_AT, 60, f"{KILL_AT} events acknowledged")
    assert not producing.done()
    for node in cluster.nodes:
        node.kill()
    killed = time.monotonic()

    # not ready, with a reason
    readyz: list[tuple[int, str]] = []

    async def not_ready() -> bool:
        readyz.append(await get(relay.url + "/readyz"))
        return readyz[-1][0] == 503

    await eventually(not_ready, 30, "/readyz to answer 503", lambda: repr(readyz[-3:]))
    text = readyz[-1][1]
    assert text.startswith("not ready: ") and len(text.strip()) > len("not ready:"), text

    # an event sent now is refused, with Retry-After, never acknowledged
    probe: list[tuple[int, dict, bytes]] = []
    probes: list[dict] = []  # may be stored after the restart if no answer came

    async def refused() -> bool:
        probes.append(make_event())
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
                session.post(
                    relay.url + "/api/status", data=orjson.dumps(probes[-1]), headers=JSON
                ) as r,
            ):
                probe.append((r.status, dict(r.headers), await r.read()))
        except (aiohttp.ClientError, TimeoutError) as exc:
            probe.append((0, {}, repr(exc).encode()))
        assert probe[-1][0] != 200, f"acknowledged while no NATS node runs: {probe[-1]}"
        return probe[-1][0] == 503

    await eventually(refused, 30, "a 503 for a new event", lambda: repr(probe[-3:]))
    assert "Retry-After" in probe[-1][1], probe[-1]

    def refusals() -> int:
        return sum(a.status == 503 and a.sent > killed for a in ledger.answers)

    await eventually(
        lambda: refusals() >= REFUSED_WHILE_DOWN,
        30,
        "the producers to be refused",
        lambda: str(ledger.statuses()),
    )
    assert not producing.done()
    acked_while_down = len(ledger.acked)

    restarted = time.monotonic()
    for node in cluster.nodes:
        node.start()
    await asyncio.to_thread(cluster.wait_ready, 30)

    # it recovers by itself: ready again, and the producers finish
    await eventually(
        lambda: _ready(relay.url),
        60,
        "/readyz 200 after the restart",
        lambda: relay.output()[-3000:],
    )
    ready_again = time.monotonic() - restarted
    await asyncio.wait_for(producing, 120)
    produced = time.monotonic() - restarted
    assert ledger.anomalies == []
    assert len(ledger.acked) == EVENTS

    # nothing was acknowledged that was sent after the kill and answered before the restart
    wrong = [
        a for a in ledger.answers if a.status == 200 and killed < a.sent < a.answered < restarted
    ]
    assert wrong == [], f"{len(wrong)} requests acknowledged while no NATS node ran: {wrong[:3]}"

    def missing() -> set[str]:
        return ledger.acked - set(received_ids(up))

    wait_until(
        lambda: not missing(),
        60,
        "every acknowledged event upstream",
        lambda: f"{len(missing())} missing\n{relay.output()[-3000:]}",
    )
    drained = time.monotonic() - restarted
    copies = received_ids(up)
    extra = sum(n - 1 for n in copies.values())
    summary = (
        f"{len(ledger.acked)} acknowledged ({acked_while_down} before the restart), "
        f"{extra} extra copies delivered; outage {restarted - killed:.1f} s; after the restart "
        f"ready in {ready_again:.1f} s, all acknowledged in {produced:.1f} s, delivered in "
        f"{drained:.1f} s; "
        f"HTTP answers {dict(ledger.statuses())}; readyz said {text.strip()!r}"
    )
    print(summary)
    record_property("jetstream_faults", summary)
    assert set(copies) <= {e["message_id"] for e in events + probes}
    assert spool_stats(relay)["dead_letters"] == 0


async def _ready(url: str) -> bool:
    return (await get(url + "/readyz"))[0] == 200
