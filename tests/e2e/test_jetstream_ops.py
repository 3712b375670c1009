"""What an operator sees of a jetstream spool: `relay spool stats --json`, `/metrics` and
`relay dlq list` report the stream's depth, bytes, oldest age and dead letters, as they do for
SQLite. A real relay (delivery off, so the events stay) on a real 3-node cluster."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.helpers import RelayProcess, make_event, send, spool_stats, wait_until
from tests.helpers.jetstream_rig import jetstream_env, require_jetstream
from tests.helpers.nats import NatsCluster

pytestmark = pytest.mark.e2e


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayProcess]:
    require_jetstream()
    with NatsCluster(tmp_path / "nats") as cluster:
        # no Maskinporten settings: delivery is off and what is posted stays in the stream
        env = {
            **jetstream_env(cluster, stream="OPS"),
            "RELAY_INGEST__JSON_LINES__TCP_LISTEN": "127.0.0.1:0",
        }
        started = RelayProcess(tmp_path / "spool", env).start()
        try:
            yield started
        finally:
            started.kill()


def metrics(relay: RelayProcess) -> dict[str, float]:
    with urllib.request.urlopen(relay.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        name: float(value)
        for line in text.splitlines()
        if line and not line.startswith("#")
        for name, _, value in [line.rpartition(" ")]
    }


def test_stats_metrics_and_dead_letters_of_a_jetstream_spool(relay: RelayProcess) -> None:
    events = [make_event() for _ in range(40)]
    send(relay, events)
    # a JSON-lines producer cannot be told a line was no event: it is kept as a dead letter
    with socket.create_connection(("127.0.0.1", relay.listening("json lines")), timeout=10) as s:
        s.sendall(b'{"not": "an event"}\n')

    def counted() -> bool:
        m = metrics(relay)
        return m.get("relay_spool_events") == 40 and m.get("relay_dead_letter_events") == 1

    wait_until(counted, 20, "/metrics to count 40 events and 1 dead letter", relay.output)
    m = metrics(relay)
    assert m["relay_spool_bytes"] > sum(len(orjson.dumps(e)) for e in events)
    assert m["relay_spool_capacity_bytes"] > 0
    wait_until(
        lambda: metrics(relay)["relay_spool_oldest_event_age_seconds"] > 0,
        20,
        "the oldest event's age",
    )

    stats = spool_stats(relay)
    assert stats["backend"] == "jetstream" and stats["path"] == "jetstream stream OPS"
    assert (stats["depth"], stats["dead_letters"]) == (40, 1)
    assert stats["bytes"] > 0 and stats["oldest_age_seconds"] > 0
    assert stats["sources"]["http"]["events"] == 40
    assert sum(n["dead_letters"] for n in stats["sources"].values()) == 1

    listed = subprocess.run(
        [sys.executable, "-m", "relay", "dlq", "list", "--json"],
        env=relay.env,
        capture_output=True,
        timeout=30,
    )
    assert listed.returncode == 0, listed.stderr
    [record] = orjson.loads(listed.stdout)
    assert record["reason"] == "invalid"
    assert "not" in record["event"]
