"""Debian's rsyslogd with omrelp and the shipped deploy/rsyslog configs against the RELP source
(in this process, real spool): plain, queued while the relay is away, and inside mutual TLS."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import orjson
import pytest

from relay.config import RelpIngestConfig
from relay.sources.relp import start_relp
from relay.sources.tls import listener_tls
from tests.helpers import InProcessRelay, eventually, make_event
from tests.helpers.rsyslog import Rsyslogd, omrelp_missing, shipped
from tests.helpers.tls import make_tls_pki

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(omrelp_missing() is not None, reason=omrelp_missing() or ""),
]


def ids(events: list[dict]) -> set[str]:
    return {e["message_id"] for e in events}


def test_shipped_omrelp_configs_are_accepted_by_rsyslogd(tmp_path: Path) -> None:
    pki = make_tls_pki(tmp_path / "pki")  # rsyslogd -N1 checks that the files are there
    for name, replace in (
        ("relay-relp.conf", {}),
        ("relay-relp-tls.conf", tls_files(pki)),
    ):
        checked = Rsyslogd(tmp_path / name, shipped(name, **replace)).check()
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "error" not in checked.stdout + checked.stderr


def tls_files(pki) -> dict[str, str]:
    return {
        "/etc/rsyslog.d/tls/relay-ca.pem": str(pki.ca_cert),
        "/etc/rsyslog.d/tls/rsyslog.pem": str(pki.client_cert),
        "/etc/rsyslog.d/tls/rsyslog.key": str(pki.client_key),
    }


async def test_rsyslog_forwards_over_relp_with_the_shipped_config(tmp_path: Path) -> None:
    """Started before the relay listens (rsyslog queues), then every event arrives once."""
    held = socket.socket()  # the port, held bound (refusing) until the relay takes it
    held.bind(("127.0.0.1", 0))
    port = held.getsockname()[1]
    rsyslog = Rsyslogd(tmp_path / "rsyslog", shipped("relay-relp.conf", **{'"2514"': f'"{port}"'}))
    relay = await InProcessRelay.open(tmp_path)
    source = None
    try:
        await asyncio.to_thread(rsyslog.start)
        early = [make_event() for _ in range(20)]
        rsyslog.send([orjson.dumps(e) for e in early] + [b"not json"])
        await eventually(
            lambda: rsyslog.said("could not connect"),
            20,
            "rsyslog to find the relay away",
            rsyslog.output,
        )
        held.close()
        source = await start_relp(RelpIngestConfig(listen=f"127.0.0.1:{port}"), relay.intake)
        late = [make_event() for _ in range(500)]
        rsyslog.send([orjson.dumps(e) for e in late])
        got = await relay.collect(520, timeout=30)
        assert ids(got) == ids(early + late)
        assert len(got) == 520
        assert relay.spool.stats().dead_letters == 1
    finally:
        held.close()
        await asyncio.to_thread(rsyslog.stop)  # the relay answers its close meanwhile
        if source is not None:
            await source.close()
        await relay.close()


async def test_rsyslog_omrelp_over_mutual_tls(tmp_path: Path) -> None:
    pki = make_tls_pki(tmp_path / "pki")
    cfg = RelpIngestConfig(
        listen="127.0.0.1:0",
        tls_cert_file=str(pki.server_cert),
        tls_key_file=str(pki.server_key),
        tls_client_ca_file=str(pki.ca_cert),
    )
    relay = await InProcessRelay.open(tmp_path)
    source = await start_relp(cfg, relay.intake, listener_tls("ingest.relp", cfg))
    forwarding = shipped(
        "relay-relp-tls.conf",
        **{
            'target="relay.example.org"': 'target="127.0.0.1"',
            '"2514"': f'"{source.port}"',
            **tls_files(pki),
            'permittedPeer=["relay.example.org"]': 'permittedPeer=["localhost"]',
        },
    )
    rsyslog = Rsyslogd(tmp_path / "rsyslog", forwarding)
    try:
        await asyncio.to_thread(rsyslog.start)
        events = [make_event() for _ in range(100)]
        rsyslog.send([orjson.dumps(e) for e in events])
        assert ids(await relay.collect(100, timeout=30)) == ids(events)
    finally:
        await asyncio.to_thread(rsyslog.stop)  # the relay answers its close meanwhile
        await source.close()
        await relay.close()


async def test_rsyslog_restarted_while_the_relay_is_away_keeps_its_queue(tmp_path: Path) -> None:
    """The shipped queue settings: what rsyslog queued for an absent relay survives a restart
    of rsyslog itself (saved to its work directory on shutdown, resent after the start)."""
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    port = held.getsockname()[1]
    rsyslog = Rsyslogd(tmp_path / "rsyslog", shipped("relay-relp.conf", **{'"2514"': f'"{port}"'}))
    relay = await InProcessRelay.open(tmp_path)
    source = None
    try:
        await asyncio.to_thread(rsyslog.start)
        events = [make_event() for _ in range(50)]
        rsyslog.send([orjson.dumps(e) for e in events])
        await eventually(
            lambda: rsyslog.said("could not connect"), 20, "rsyslog to find the relay away"
        )
        await asyncio.to_thread(rsyslog.stop)
        saved = list((tmp_path / "rsyslog").glob("relay-relp*"))
        assert saved, "rsyslog saved no queue file on shutdown"
        await asyncio.to_thread(rsyslog.start)
        held.close()
        source = await start_relp(RelpIngestConfig(listen=f"127.0.0.1:{port}"), relay.intake)
        got = await relay.collect(50, timeout=30)
        assert ids(got) == ids(events)
    finally:
        held.close()
        await asyncio.to_thread(rsyslog.stop)
        if source is not None:
            await source.close()
        await relay.close()
