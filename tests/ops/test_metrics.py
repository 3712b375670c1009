"""/metrics reads what the sources count, with the names and labels dashboards know."""

from __future__ import annotations

from pathlib import Path

import orjson
from prometheus_client.parser import text_string_to_metric_families

from relay.ops import collectors
from relay.ops.metrics import Metrics
from tests.helpers import inprocess_relay, make_event


def samples(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_source_counters_are_exported_at_scrape_time(tmp_path: Path) -> None:
    async with inprocess_relay(tmp_path) as relay:
        await relay.start_http()
        await relay.start_json_lines()
        metrics = Metrics()
        collectors.register(metrics, relay.spool, None, relay.intake.counters)
        collectors.register_listeners(metrics, {"json_lines": relay.json_lines.tcp}, lambda: None)
        event = orjson.dumps(make_event())
        json = {"Content-Type": "application/json"}
        for body in (event, event, orjson.dumps([make_event(), {"status": "NOPE"}])):
            assert (await relay.post(body, **json))[0] == 200
        found = samples(metrics)
    http = (("source", "http"),)
    assert found["relay_received_events_total", http] == 4
    assert found["relay_duplicate_events_total", http] == 1
    assert found["relay_rejected_events_total", (("reason", "invalid"), ("source", "http"))] == 1
    assert found["relay_dead_lettered_events_total", (("reason", "invalid"),)] == 1
    # declared at zero when a source starts
    lines = (("source", "json_lines"),)
    assert found["relay_received_events_total", lines] == 0
    assert found["relay_skipped_lines_total", (("reason", "not_status"), *lines)] == 0
    assert found["relay_rejected_events_total", (("reason", "spool_full"), *lines)] == 0
    assert found["relay_tcp_connections", lines] == 0
    # counters carry their start time, as prometheus-client's own counters do
    assert found["relay_received_events_created", http] > 0
    assert not any(name == "relay_syslog_udp_kernel_drops_total" for name, _ in found)
