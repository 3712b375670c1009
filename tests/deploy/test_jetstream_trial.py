"""deploy/nats/ for real, without Docker: the three shipped node configs run as a cluster on
this machine's loopback, and the compose file's two relays run with its spool settings; an
event posted to either relay reaches the status-service stand-in, also with one node killed.

Only what cannot work outside compose is changed: the service names become 127.0.0.1 with
ports of their own, the store directory a temporary one, and the monitoring port is left out
(three nodes cannot share 8222). Everything else, `sync_interval: always` and the routes to all
three nodes included, is the shipped file's.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest

from tests.deploy.jetstream_files import (
    NATS_DIR,
    parse_nats_conf,
    port_of,
    relay_services,
)
from tests.helpers import RelayProcess, UpstreamProcess, make_event, wait_until
from tests.helpers.nats import NatsCluster, require_nats_server

pytestmark = pytest.mark.e2e


def _on_loopback(cluster: NatsCluster, tmp_path: Path) -> None:
    """Each node's config file replaced by the shipped one, moved onto this machine."""
    routes = {n.name: n.cluster_port for n in cluster.nodes}
    for node in cluster.nodes:
        text = (NATS_DIR / f"{node.name}.conf").read_text(encoding="utf-8")
        conf = parse_nats_conf(text)
        jetstream, shipped = conf["jetstream"], conf["cluster"]
        assert jetstream["sync_interval"] == "always"
        text = text.replace(f"listen: {conf['listen']}", f"listen: 127.0.0.1:{node.port}")
        text = text.replace(
            f"listen: {shipped['listen']}", f"listen: 127.0.0.1:{node.cluster_port}"
        )
        text = text.replace(f"http_port: {conf['http_port']}", "")
        store = tmp_path / f"{node.name}-store"
        text = text.replace(f"store_dir: {jetstream['store_dir']}", f'store_dir: "{store}"')
        for route in shipped["routes"]:
            name = urlsplit(route).hostname
            text = text.replace(route, f"nats-route://127.0.0.1:{routes[name]}")
        moved = parse_nats_conf(text)
        assert moved["jetstream"]["sync_interval"] == "always"
        assert len(moved["cluster"]["routes"]) == 3
        node.conf.write_text(text, encoding="utf-8")


def _spool_env(service: dict, cluster: NatsCluster) -> dict[str, str]:
    """The compose relay's RELAY_SPOOL__* settings, its server names mapped to the nodes."""
    env = {k: str(v) for k, v in service["environment"].items() if k.startswith("RELAY_SPOOL__")}
    env.pop("RELAY_SPOOL__PATH")
    urls = []
    for url in env["RELAY_SPOOL__JETSTREAM__SERVERS"].split(","):
        node = cluster.node(urlsplit(url).hostname)
        conf = parse_nats_conf((NATS_DIR / f"{node.name}.conf").read_text(encoding="utf-8"))
        assert urlsplit(url).port == port_of(conf["listen"])
        urls.append(node.url)
    env["RELAY_SPOOL__JETSTREAM__SERVERS"] = ",".join(urls)
    return env


def _post(relay: RelayProcess, event: dict) -> int:
    request = urllib.request.Request(
        relay.url + "/api/status", orjson.dumps(event), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _stored(relay: RelayProcess, event: dict) -> bool:
    """Posted as a producer does: a 503 (no stream leader yet after a node died) is retried."""
    status = _post(relay, event)
    assert status in (200, 503), f"{relay.url}: {status}"
    return status == 200


def test_compose_cluster_and_relays_deliver_with_a_node_down(tmp_path: Path) -> None:
    require_nats_server()
    cluster = NatsCluster(tmp_path / "nats")
    _on_loopback(cluster, tmp_path)
    up = UpstreamProcess(tmp_path / "upstream")
    relays = [
        RelayProcess(tmp_path / f"spool-{name}", env=_spool_env(service, cluster), config=up.config)
        for name, service in sorted(relay_services().items())
    ]
    try:
        cluster.start()
        up.start()
        for relay in relays:
            relay.start(timeout=60)

        def delivered(events: list[dict]) -> bool:
            got = [s["message_id"] for s in up.statuses()]
            return all(got.count(e["message_id"]) == 1 for e in events)

        sent = []
        for relay in relays:
            sent.append(make_event())
            assert _post(relay, sent[-1]) == 200  # all three nodes up: no refusal
        wait_until(lambda: delivered(sent), 60, "both events at the stand-in", cluster.output)
        # One node of three down: a quorum is left, so events are still stored and delivered.
        # Where n2 led the stream, the relays refuse (503) until a new leader is elected.
        cluster.kill("n2")
        for relay in relays:
            sent.append(make_event())
            event = sent[-1]
            wait_until(lambda r=relay, e=event: _stored(r, e), 30, "a 200, n2 down", relay.output)
        wait_until(lambda: delivered(sent), 60, "events sent with n2 down", cluster.output)
        assert up.stats()["dropped"] == 0
    finally:
        for relay in relays:
            relay.kill()
        up.kill()
        cluster.stop()
