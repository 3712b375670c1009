"""What operators see: /metrics, /status, and a clean SIGTERM under load."""

from __future__ import annotations

import asyncio
import re
import signal
import time
import urllib.request

import aiohttp
import orjson
import pytest

from tests.helpers import FAST_RETRY, make_event, received_ids, send, spool_stats, wait_until

METRIC_NAMES = [
    "relay_spool_events",
    "relay_spool_bytes",
    "relay_spool_capacity_bytes",
    "relay_spool_oldest_event_age_seconds",
    "relay_dead_letter_events",
    "relay_received_events_total",
    "relay_rejected_events_total",
    "relay_duplicate_events_total",
    "relay_delivered_events_total",
    "relay_delivery_retries_total",
    "relay_dead_lettered_events_total",
    "relay_redelivered_events_total",
    "relay_upstream_connected",
    "relay_token_expires_in_seconds",
    "relay_token_fetches_total",
    "relay_delivery_latency_seconds",
    "relay_spool_commit_seconds",
]


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def sample(text: str, name: str) -> float:
    match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


@pytest.mark.e2e  # relay and upstream subprocesses (the fixtures mark it too; this says so here)
def test_metrics_names_and_spool_gauges_match_spool_stats(upstream_factory, relay_factory) -> None:
    up = upstream_factory()
    relay = relay_factory(config=up.config, env=FAST_RETRY).start()
    send(relay, [make_event() for _ in range(10)])
    wait_until(lambda: up.stats()["total"] == 10, 20, "the first events")
    wait_until(lambda: spool_stats(relay)["depth"] == 0, 20, "their acks")
    up.kill()  # what comes now stays in the spool
    send(relay, [make_event() for _ in range(25)])
    bad = orjson.dumps(make_event(sender="nope"))
    req = urllib.request.Request(
        relay.url + "/api/status",
        data=bad + b"\n",
        headers={"Content-Type": "application/x-ndjson"},
    )
    urllib.request.urlopen(req, timeout=5).read()
    text = get(relay.url + "/metrics")
    for name in METRIC_NAMES:
        assert re.search(rf"^# TYPE {name} ", text, re.MULTILINE) or name in text, name
    stats = spool_stats(relay)
    assert sample(text, "relay_spool_events") == stats["depth"] == 25
    assert sample(text, "relay_spool_bytes") == stats["bytes"]
    assert sample(text, "relay_dead_letter_events") == stats["dead_letters"] == 1
    assert sample(text, "relay_spool_capacity_bytes") == stats["capacity_bytes"]
    assert sample(text, "relay_delivered_events_total") == 10
    assert 'relay_rejected_events_total{reason="invalid",source="http"} 1.0' in text
    assert sample(text, "relay_delivery_latency_seconds_count") == 10


def status(relay) -> dict:
    return orjson.loads(get(relay.url + "/status"))


@pytest.mark.e2e
def test_status_degrades_when_upstream_is_down_and_recovers(
    upstream_factory, relay_factory
) -> None:
    up = upstream_factory()
    env = {**FAST_RETRY, "RELAY_HEALTH__STALL_AFTER": "2s"}
    relay = relay_factory(config=up.config, env=env).start()
    send(relay, [make_event()])
    wait_until(lambda: up.stats()["total"] == 1, 20, "the first event")
    wait_until(lambda: status(relay)["spool"]["events"] == 0, 20, "the ack")
    assert status(relay)["status"] == "ok", status(relay)["reasons"]
    up.kill()
    send(relay, [make_event() for _ in range(5)])
    wait_until(lambda: status(relay)["status"] == "degraded", 20, "status degraded")
    wait_until(lambda: any("unreachable" in r for r in status(relay)["reasons"]), 10, "the reason")
    report = status(relay)
    assert any("nothing delivered" in r for r in report["reasons"]), report["reasons"]
    assert report["spool"]["events"] == 5
    assert report["upstream"]["connected"] is False
    up.start()
    wait_until(lambda: status(relay)["status"] == "ok", 30, "status ok again")
    wait_until(lambda: up.stats()["total"] == 6, 30, "the backlog")


async def _producer(url: str, acked: list[str], stop: asyncio.Event) -> None:
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            event = make_event()
            try:
                async with session.post(url + "/api/status", json=event) as r:
                    if r.status == 200:
                        acked.append(event["message_id"])
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)


@pytest.mark.e2e
def test_sigterm_under_load_exits_in_time_and_loses_nothing(
    upstream_factory, relay_factory
) -> None:
    up = upstream_factory()
    env = {**FAST_RETRY, "RELAY_LIFECYCLE__SHUTDOWN_TIMEOUT": "3s"}
    relay = relay_factory(config=up.config, env=env).start()
    up.faults(delay=5.0)  # requests in flight will outlast the shutdown timeout

    async def load() -> list[str]:
        acked: list[str] = []
        stop = asyncio.Event()
        tasks = [asyncio.create_task(_producer(relay.url, acked, stop)) for _ in range(8)]
        await asyncio.sleep(2.0)
        started = time.monotonic()
        relay.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(relay.proc.wait, 20)
        took = time.monotonic() - started
        stop.set()
        await asyncio.gather(*tasks)
        assert code == 0, relay.output()
        assert took < 3.0 + 1.5, f"took {took:.1f} s to stop"
        return acked

    acked = asyncio.run(load())
    assert len(acked) > 50
    assert "Traceback" not in relay.output()
    up.faults(delay=0.0)
    relay.start()
    wait_until(lambda: set(received_ids(up)) >= set(acked), 60, "every acknowledged event")
