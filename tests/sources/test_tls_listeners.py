"""TLS and mutual TLS on every TCP listener (HTTP, syslog RFC 5425, JSON lines, RELP), in this
process with a real SQLite spool behind them and a throwaway PKI made for each test.

Each listener must show the configured certificate, serve a client whose certificate our CA
signed, and refuse (storing nothing) a client with no certificate, one from another CA, an
expired one, and plain text. With TLS 1.3 the client's handshake finishes before the server has
checked the client's certificate, so a refusal shows up on the client as the connection closing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import InProcessRelay, eventually, inprocess_relay, make_event
from tests.helpers.tls import TlsPki, make_tls_pki, serial_of
from tests.helpers.tls_listener import KINDS, started


@pytest.fixture
def pki(tmp_path: Path) -> TlsPki:
    return make_tls_pki(tmp_path / "pki")


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[InProcessRelay]:
    async with inprocess_relay(tmp_path) as r:
        yield r


@pytest.mark.parametrize("kind", KINDS)
async def test_mutual_tls_serves_the_good_client_and_refuses_the_others(
    relay: InProcessRelay, pki: TlsPki, kind: str
) -> None:
    listener = await started(relay, kind, pki)
    bad = {
        "no certificate": pki.client_context(),
        "another CA": pki.client_context(cert=pki.other_client_cert, key=pki.other_client_key),
        "expired": pki.client_context(cert=pki.expired_client_cert, key=pki.expired_client_key),
    }
    for context in bad.values():
        await listener.refused(context)
    await listener.refused(None)  # plain text on the TLS port
    await eventually(
        lambda: listener.tls.handshake_failures >= 4, 10, "four failed handshakes counted"
    )

    good = [make_event() for _ in range(3)]
    serial, answer = await listener.send(pki.good_client_context(), good)
    assert serial == serial_of(pki.server_cert)  # the configured certificate was shown
    if kind == "http":
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    if kind == "relp":  # open and the three syslog commands answered 200, then close
        assert answer.startswith(b"1 rsp ") and answer.count(b" rsp 6 200 OK\n") == 3, answer
    seen = await relay.collect(3)
    assert {e["message_id"] for e in seen} == {e["message_id"] for e in good}
    # nothing a refused client sent was stored (the good events are in, so it had its chance)
    assert relay.spool.stats().events == 3
    assert relay.spool.stats().dead_letters == 0


@pytest.mark.parametrize("kind", KINDS)
async def test_tls_without_client_ca_serves_any_client(
    relay: InProcessRelay, pki: TlsPki, kind: str
) -> None:
    listener = await started(relay, kind, pki, mutual=False)
    assert listener.tls.describe() == "tls"
    serial, _ = await listener.send(pki.client_context(), [make_event()])
    assert serial == serial_of(pki.server_cert)
    await relay.collect(1)


@pytest.mark.parametrize("kind", KINDS)
async def test_failed_handshakes_give_their_connection_slots_back(
    relay: InProcessRelay, pki: TlsPki, kind: str
) -> None:
    """Many bad clients in a row on a listener with 2 connection slots: the good one after them
    is still served."""
    listener = await started(relay, kind, pki, max_connections=2)
    no_cert = pki.client_context()
    for _ in range(10):
        await listener.refused(no_cert)
        await listener.refused(None)
    await eventually(lambda: listener.tls.handshake_failures >= 20, 10, "20 failures")
    await listener.send(pki.good_client_context(), [make_event()])
    await relay.collect(1)
    assert relay.spool.stats().events == 1


async def test_silent_clients_hold_no_more_than_the_handshake_limit(
    relay: InProcessRelay,
    pki: TlsPki,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Clients that connect and say nothing: at most max_connections handshakes wait at a time
    (the others are closed at once), each for at most HANDSHAKE_TIMEOUT; then a good client is
    served."""
    monkeypatch.setattr("relay.sources.tls.HANDSHAKE_TIMEOUT", 0.5)
    listener = await started(relay, "json_lines", pki, max_connections=3)
    silent = [await asyncio.open_connection("127.0.0.1", listener.port) for _ in range(6)]
    tcp = relay.json_lines.tcp if relay.json_lines else None
    assert tcp is not None and tcp._tls.context is not None
    with caplog.at_level(logging.WARNING, "relay.sources.tls"):
        await eventually(lambda: tcp._tls.refused == 3, 5, "3 connections over the limit")
    busy = [
        r.getMessage() for r in caplog.records if "TLS handshakes are running" in r.getMessage()
    ]
    assert len(busy) == 1 and busy[0].startswith("ingest.json_lines: 3 TLS handshakes"), busy
    assert tcp._tls.running <= 3
    # the ones over the limit are closed at once; the others when their handshake times out
    for reader, _ in silent:
        assert await asyncio.wait_for(reader.read(), 5) == b""
    await eventually(lambda: tcp._tls.running == 0, 5, "the handshakes given up")
    for _, writer in silent:
        writer.close()
    await listener.send(pki.good_client_context(), [make_event()])
    await relay.collect(1)


async def test_https_through_aiohttp_with_a_client_certificate(
    relay: InProcessRelay, pki: TlsPki
) -> None:
    """An ordinary HTTPS client (aiohttp) with mutual TLS: accepted, and keep-alive works."""
    listener = await started(relay, "http", pki)
    url = f"https://localhost:{listener.port}/api/status"
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.post(
                url, json=[make_event()], ssl=pki.good_client_context()
            ) as response:
                assert response.status == 200, await response.text()
        with pytest.raises(aiohttp.ClientError):
            async with session.post(url, json=[make_event()], ssl=pki.client_context()) as r:
                await r.read()
    await relay.collect(3)


async def test_silent_https_clients_hold_a_slot_for_the_handshake_timeout_only(
    relay: InProcessRelay, pki: TlsPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP keeps callers over max_connections in the kernel's queue: silent clients in every
    slot delay a good client by at most the handshake timeout, and are counted as failures."""
    monkeypatch.setattr("relay.sources.http_listener.HANDSHAKE_TIMEOUT", 0.5)
    listener = await started(relay, "http", pki, max_connections=2)
    silent = [await asyncio.open_connection("127.0.0.1", listener.port) for _ in range(4)]
    serial, answer = await listener.send(pki.good_client_context(), [make_event()])
    assert answer.startswith(b"HTTP/1.1 200") and serial == serial_of(pki.server_cert)
    await eventually(lambda: listener.tls.handshake_failures >= 2, 5, "the timeouts counted")
    for reader, writer in silent:
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    await relay.collect(1)
