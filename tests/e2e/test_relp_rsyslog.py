"""Debian's rsyslogd forwards a stream of status lines with omrelp (the shipped
deploy/rsyslog/relay-relp.conf) to a relay that is SIGKILLed and restarted several times
meanwhile; every line reaches an RSocket peer no one here wrote (rsocket-js under Node).

What makes this work: the relay answers a RELP frame only once its event is committed, librelp
keeps what is unanswered and resends it after reconnecting, and the spool's dedup absorbs what
was stored before the kill and resent after it."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import orjson
import pytest

from tests.helpers import FAST_RETRY, free_port, make_event, spool_stats, wait_until
from tests.helpers.rsyslog import Rsyslogd, omrelp_missing, shipped

NODE = shutil.which("node")
NODE_DIR = Path(__file__).resolve().parents[1] / "node"

pytestmark = [
    pytest.mark.interop,
    pytest.mark.e2e,
    pytest.mark.skipif(omrelp_missing() is not None, reason=omrelp_missing() or ""),
    pytest.mark.skipif(NODE is None, reason="node is not installed"),
    pytest.mark.skipif(
        not (NODE_DIR / "node_modules").is_dir(),
        reason="tests/node/node_modules is absent: run `npm ci --prefix tests/node`",
    ),
]

EVENTS = 4000
KILLS = 3


def start_node_peer(up, out: Path, log: Path) -> tuple[subprocess.Popen, int]:
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
        stderr=open(log, "wb"),  # noqa: SIM115 - handed to the child
        text=True,
    )
    return node, int(node.stdout.readline().split()[1])


def delivered(out: Path) -> list[str]:
    """message_ids the peer received, in arrival order (a duplicate appears twice)."""
    if not out.exists():
        return []
    lines = out.read_bytes().splitlines()
    records = [orjson.loads(line) for line in lines if line.startswith(b"{") and b'"event"' in line]
    return [r["event"]["message_id"] for r in records if "event" in r]


def test_rsyslog_omrelp_stream_survives_relay_sigkills(
    upstream_factory, relay_factory, tmp_path: Path
) -> None:
    up = upstream_factory()
    out = tmp_path / "received.jsonl"
    node, node_port = start_node_peer(up, out, tmp_path / "node.log")
    relp_port = free_port()
    relay = relay_factory(
        config=up.config,
        env={
            **FAST_RETRY,
            "RELAY_UPSTREAM__HOST": "127.0.0.1",
            "RELAY_UPSTREAM__PORT": str(node_port),
            "RELAY_INGEST__RELP__LISTEN": f"127.0.0.1:{relp_port}",
        },
    ).start()
    # the shipped file, pointed at this relay and retrying every second instead of every two
    rsyslog = Rsyslogd(
        tmp_path / "rsyslog",
        shipped(
            "relay-relp.conf",
            **{
                '"2514"': f'"{relp_port}"',
                'action.resumeInterval="2"': 'action.resumeInterval="1"',
            },
        ),
    ).start()
    events = [make_event() for _ in range(EVENTS)]
    sender_failed: list[BaseException] = []

    def send_stream() -> None:
        # about 800 lines a second, so the stream is still flowing through every kill
        try:
            for i in range(0, EVENTS, 40):
                rsyslog.send([orjson.dumps(e) for e in events[i : i + 40]])
                time.sleep(0.05)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            sender_failed.append(exc)

    sender = threading.Thread(target=send_stream, daemon=True)
    started = time.monotonic()
    try:
        sender.start()
        for kill in range(KILLS):
            # kill once the peer has some of the stream: frames are in flight at that moment
            threshold = (kill + 1) * EVENTS // (KILLS + 2)
            wait_until(
                lambda t=threshold: len(set(delivered(out))) >= t,
                60,
                f"{threshold} events at the peer before kill {kill + 1}",
                lambda: relay.output()[-3000:] + rsyslog.output()[-2000:],
            )
            relay.kill()
            relay.start()
        sender.join(timeout=60)
        assert not sender_failed, sender_failed
        wanted = {e["message_id"] for e in events}
        wait_until(
            lambda: wanted <= set(delivered(out)),
            120,
            "every event at the peer",
            lambda: f"{len(wanted - set(delivered(out)))} missing\n" + rsyslog.output()[-3000:],
        )
        elapsed = time.monotonic() - started
        got = delivered(out)
        print(
            f"\nRELP through {KILLS} SIGKILLs: {len(wanted)} events, {len(got) - len(set(got))} "
            f"delivered twice, {elapsed:.1f} s"
        )
        assert set(got) == wanted
        assert spool_stats(relay)["dead_letters"] == 0
        assert relay.output().count("relay ready:") == KILLS + 1
        # each kill broke rsyslog's session mid-stream: it suspended, reconnected and resent
        assert rsyslog.output().count("suspending") >= KILLS, rsyslog.output()
    finally:
        rsyslog.stop()
        node.terminate()
        node.wait(timeout=10)
