"""The relay against an RSocket server no one here wrote: rsocket-js under Node, acting as the
Spring status service (route `log-fire`, per-request bearer JWT checked against a JWKS)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from tests.helpers import make_event, send, spool_stats, wait_until

NODE = shutil.which("node")
NODE_DIR = Path(__file__).resolve().parents[1] / "node"

pytestmark = [
    pytest.mark.interop,
    pytest.mark.e2e,
    pytest.mark.skipif(NODE is None, reason="node is not installed"),
    pytest.mark.skipif(
        not (NODE_DIR / "node_modules").is_dir(),
        reason="tests/node/node_modules is absent: run `npm ci --prefix tests/node`",
    ),
]

EVENTS = 10_000


def test_relay_delivers_through_rsocket_js_with_5s_tokens(
    upstream_factory, relay_factory, tmp_path: Path
) -> None:
    up = upstream_factory(token_lifetime=5)  # its Maskinporten stand-in issues the tokens
    out = tmp_path / "received.jsonl"
    node = subprocess.Popen(
        [
            NODE,
            str(NODE_DIR / "status-server.js"),
            "--port",
            "0",
            "--jwks-url",
            up.maskinporten_url + "/jwk",
            "--scope",
            "eformidling:dpo",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "node.log", "wb"),  # noqa: SIM115
        text=True,
    )
    try:
        port = int(node.stdout.readline().split()[1])
        relay = relay_factory(
            config=up.config,
            env={"RELAY_UPSTREAM__HOST": "127.0.0.1", "RELAY_UPSTREAM__PORT": str(port)},
        ).start()
        events = [make_event() for _ in range(EVENTS)]
        for i in range(0, EVENTS, 1000):  # spread over ~12 s: several 5 s tokens come and go
            send(relay, events[i : i + 1000])
            time.sleep(1.2)

        def received() -> list[dict]:
            lines = out.read_text().splitlines() if out.exists() else []
            return [orjson.loads(line) for line in lines]

        wait_until(
            lambda: sum("event" in r for r in received()) >= EVENTS, 120, "events at the peer"
        )
        records = received()
    finally:
        node.terminate()
        node.wait(timeout=10)

    setups = [r["setup"] for r in records if "setup" in r]
    assert setups[0]["metadata_mime_type"] == "message/x.rsocket.composite-metadata.v0"
    assert setups[0]["data_mime_type"] == "application/json"
    assert (setups[0]["keepalive_interval_ms"], setups[0]["max_lifetime_ms"]) == (20000, 90000)
    got = [r for r in records if "event" in r]
    assert {r["event"]["message_id"] for r in got} == {e["message_id"] for e in events}
    assert all(r["event"]["logger_name"] == "STATUS" for r in got)
    assert all(r["client_id"] == "MOVE_IP_991825827" for r in got)
    assert all(r["interaction"] == "request-response" for r in got)
    # several tokens were used, every one valid when it arrived
    assert len({r["jti"] for r in got}) >= 2
    node_log = (tmp_path / "node.log").read_text()
    assert "rejected:" not in node_log, "the peer refused a request (a token?)"
    # the peer acks what the real service would drop; a dropped line is a lost event
    assert [r["dropped"] for r in records if "dropped" in r] == []
    assert spool_stats(relay)["dead_letters"] == 0
