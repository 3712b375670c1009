"""The RELP source on a real port with a real SQLite spool behind it, talked to by a RELP client
written here (tests/helpers/relp.py) the way librelp talks."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest

from relay.config import RelpIngestConfig
from relay.errors import UserError
from relay.sources.relp import RelpSource, start_relp
from relay.sources.tls import listener_tls
from relay.spool import Incoming, SpoolRefused, list_dead_letters
from tests.helpers import InProcessRelay, make_event
from tests.helpers.relp import RelpClient
from tests.helpers.tls import make_tls_pki, peer_serial, renew_server_cert, serial_of

LOCAL = "127.0.0.1:0"


def rfc5424(event: dict) -> bytes:
    return b"<14>1 2024-05-01T10:00:00Z host app 17 - - " + orjson.dumps(event)


def forward_format(event: dict) -> bytes:
    """What rsyslog's omrelp sends by default (RSYSLOG_ForwardFormat)."""
    return b"<13>2024-05-01T10:00:00.123456+00:00 host eformidling-status: " + orjson.dumps(event)


def ids(events: list[dict]) -> set[str]:
    return {e["message_id"] for e in events}


@asynccontextmanager
async def relp_relay(
    tmp_path: Path, *, tls=None, **cfg: object
) -> AsyncIterator[tuple[InProcessRelay, RelpSource]]:
    spool_kw = {k: cfg.pop(k) for k in ("max_bytes",) if k in cfg}
    relay = await InProcessRelay.open(tmp_path, **spool_kw)
    source = await start_relp(RelpIngestConfig(listen=LOCAL, **cfg), relay.intake, tls)
    try:
        yield relay, source
    finally:
        await source.close()
        await relay.close()


async def fill(relay: InProcessRelay) -> None:
    """Fill the spool from another source until it refuses."""
    padding = "p" * 3000
    while True:
        batch = [
            Incoming(orjson.dumps(make_event(description=padding)), "http") for _ in range(200)
        ]
        try:
            await relay.intake.submit("http", batch)
        except SpoolRefused:
            return


async def test_open_negotiates_and_events_are_answered_once_stored(tmp_path: Path) -> None:
    async with relp_relay(tmp_path) as (relay, source):
        client = await RelpClient.connect(source.port, open_session=False)
        txnr = client.send("open", b"relp_version=0\nrelp_software=librelp,1.11.0\ncommands=syslog")
        offers = (await client.answer(txnr)).data.split(b"\n")
        assert offers[0] == b"200 OK"
        assert b"relp_version=0" in offers and b"commands=syslog" in offers
        events = [make_event() for _ in range(50)]
        txnrs = client.syslog(*(forward_format(e) for e in events[:25]))
        txnrs += client.syslog(*(rfc5424(e) for e in events[25:]))
        for number in txnrs:  # answers come in command order, each 200
            assert (await client.answer(number)).data == b"200 OK"
        # every answered event is in the spool (committed) by the time its answer is read
        assert relay.spool.stats().events == 50
        assert ids(await relay.collect(50)) == ids(events)
        txnr = client.send("close")
        assert (await client.answer(txnr)).data == b""
        assert await client.rest() == []  # then the relay closes the connection
        assert relay.intake.counters.received["relp"] == 50


async def test_invalid_events_are_dead_lettered_and_acknowledged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "relay.sources")
    async with relp_relay(tmp_path) as (relay, source):
        client = await RelpClient.connect(source.port)
        good = make_event()
        messages = [b"<13>host app: not json", b"<13>host app: still not json", rfc5424(good)]
        messages.append(b"<13>host app: " + orjson.dumps(dict(make_event(), logger_name="other")))
        txnrs = client.syslog(*messages)
        answers = await client.answers(len(txnrs))
        assert [(a.txnr, a.data) for a in answers] == [(t, b"200 OK") for t in txnrs]
        assert ids(await relay.collect(1)) == {good["message_id"]}
        letters = list_dead_letters(tmp_path / "spool")
        assert sorted(d.body.decode() for d in letters) == sorted(
            m.decode() for m in messages if m != rfc5424(good)
        )
        assert {d.source for d in letters} == {"relp"}
        logged = [m for m in caplog.messages if "not a valid status event" in m]
        assert len(logged) == 1, logged  # once per kind, not once per event
        await client.close()


async def test_full_spool_holds_the_answers_then_closes_and_the_resend_is_deduplicated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "relay.sources")
    async with relp_relay(tmp_path, max_bytes=2 << 20, refused_close_after=1.0) as (relay, source):
        client = await RelpClient.connect(source.port)
        events = [make_event() for _ in range(10)]
        await fill(relay)
        client.syslog(*(rfc5424(e) for e in events))
        # no answer while the spool refuses, then the connection is closed with the hint
        frames = await client.rest(timeout=10)
        assert [(f.txnr, f.command) for f in frames] == [(0, "serverclose")]
        assert any("after holding 10 answer(s)" in m for m in caplog.messages)
        assert source.listener.held_too_long == 1
        # room again: the sender reconnects and resends with new transaction numbers
        while leased := await relay.spool.lease(1000):  # delivery drains what filled it
            await relay.spool.ack([item.id for item in leased])
        again = await RelpClient.connect(source.port)
        again.txnr = 100
        txnrs = again.syslog(*(rfc5424(e) for e in events))
        assert [a.txnr for a in await again.answers(10)] == txnrs
        assert ids(await relay.collect(10)) == ids(events)
        # answers lost on the way (the relay died after the commit): resent, stored once
        txnrs = again.syslog(*(rfc5424(e) for e in events))
        assert [a.txnr for a in await again.answers(10)] == txnrs
        assert relay.intake.counters.duplicates["relp"] == 10
        await again.close()


async def test_data_length_over_the_limit_is_dead_lettered_answered_500_and_closed(
    tmp_path: Path,
) -> None:
    async with relp_relay(tmp_path) as (relay, source):
        client = await RelpClient.connect(source.port)
        good = make_event()
        first = client.syslog(rfc5424(good))[0]
        client.writer.write(b"3 syslog 999999999 " + b"x" * 5000)
        frames = await client.rest()
        assert [(f.txnr, f.data[:3]) for f in frames] == [(first, b"200"), (3, b"500"), (0, b"")]
        assert frames[-1].command == "serverclose"
        [letter] = list_dead_letters(tmp_path / "spool")
        assert (letter.source, letter.reason) == ("relp", "too_large")
        assert letter.body.startswith(b"3 syslog 999999999 xxx") and len(letter.body) == 1024
        assert source.listener.broken_connections == 1
        assert ids(await relay.collect(1)) == {good["message_id"]}


@pytest.mark.parametrize("junk", [b"GET / HTTP/1.1\r\n\r\n", b"1 syslog 5 abcdefgh\n"])
async def test_malformed_frame_is_dead_lettered_and_closes(tmp_path: Path, junk: bytes) -> None:
    async with relp_relay(tmp_path) as (_, source):
        client = await RelpClient.connect(source.port)
        client.writer.write(junk)
        frames = await client.rest()
        assert [(f.txnr, f.command) for f in frames] == [(0, "serverclose")]
        [letter] = list_dead_letters(tmp_path / "spool")
        assert letter.reason == "invalid" and "not a RELP frame" in letter.last_error


async def test_syslog_before_open_is_refused(tmp_path: Path) -> None:
    async with relp_relay(tmp_path) as (relay, source):
        client = await RelpClient.connect(source.port, open_session=False)
        client.syslog(rfc5424(make_event()))
        frames = await client.rest()
        assert [(f.command, f.data[:3]) for f in frames] == [("rsp", b"500"), ("serverclose", b"")]
        assert relay.spool.stats().events == 0


async def test_shutdown_sends_serverclose_after_the_last_answer(tmp_path: Path) -> None:
    relay = await InProcessRelay.open(tmp_path)
    source = await start_relp(RelpIngestConfig(listen=LOCAL), relay.intake)
    client = await RelpClient.connect(source.port)
    txnr = client.syslog(rfc5424(make_event()))[0]
    await client.answer(txnr)
    await source.close()
    frames = await client.rest()
    assert [(f.txnr, f.command) for f in frames] == [(0, "serverclose")]
    await relay.close()


async def test_connections_over_the_limit_are_closed(tmp_path: Path) -> None:
    async with relp_relay(tmp_path, max_connections=1) as (_, source):
        first = await RelpClient.connect(source.port)
        reader, writer = await asyncio.open_connection("127.0.0.1", source.port)
        assert await reader.read() == b""
        assert source.listener.refused_connections == 1
        writer.close()
        await first.close()


async def test_listen_failure_names_the_setting(tmp_path: Path) -> None:
    async with relp_relay(tmp_path) as (relay, source):
        with pytest.raises(UserError, match=r"ingest\.relp\.listen"):
            await start_relp(RelpIngestConfig(listen=f"127.0.0.1:{source.port}"), relay.intake)


async def test_mutual_tls(tmp_path: Path) -> None:
    pki = make_tls_pki(tmp_path / "pki")
    cfg = RelpIngestConfig(
        tls_cert_file=str(pki.server_cert),
        tls_key_file=str(pki.server_key),
        tls_client_ca_file=str(pki.ca_cert),
    )
    tls = listener_tls("ingest.relp", cfg)
    async with relp_relay(tmp_path, tls=tls) as (relay, source):
        event = make_event()
        client = await RelpClient.connect(source.port, tls=pki.good_client_context())
        await client.answer(client.syslog(rfc5424(event))[0])
        assert ids(await relay.collect(1)) == {event["message_id"]}
        await client.close()
        for context in (
            pki.client_context(),
            pki.client_context(cert=pki.expired_client_cert, key=pki.expired_client_key),
            pki.client_context(cert=pki.other_client_cert, key=pki.other_client_key),
        ):
            with pytest.raises((AssertionError, OSError)):
                await RelpClient.connect(source.port, tls=context)
        assert relay.spool.stats().events == 1


async def test_renewed_certificate_is_served_to_new_connections(tmp_path: Path) -> None:
    pki = make_tls_pki(tmp_path / "pki")
    cfg = RelpIngestConfig(tls_cert_file=str(pki.server_cert), tls_key_file=str(pki.server_key))
    tls = listener_tls("ingest.relp", cfg)
    async with relp_relay(tmp_path, tls=tls) as (relay, source):
        old = await RelpClient.connect(source.port, tls=pki.client_context())
        first = peer_serial(old.writer.get_extra_info("ssl_object"))
        assert first == serial_of(pki.server_cert)
        renewed = renew_server_cert(pki)
        tls.reload(str(pki.server_cert), str(pki.server_key), "")  # what SIGHUP does
        new = await RelpClient.connect(source.port, tls=pki.client_context())
        assert peer_serial(new.writer.get_extra_info("ssl_object")) == renewed != first
        # the connection opened before the renewal goes on as it was
        events = [make_event(), make_event()]
        await old.answer(old.syslog(rfc5424(events[0]))[0])
        await new.answer(new.syslog(rfc5424(events[1]))[0])
        assert ids(await relay.collect(2)) == ids(events)
        await old.close()
        await new.close()


async def test_a_peer_that_never_reads_its_answers_is_no_longer_read(tmp_path: Path) -> None:
    async with relp_relay(tmp_path) as (relay, source):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills sooner
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", source.port))
        await loop.sock_sendall(sock, b"1 open 14 relp_version=0\n")
        assert (await loop.sock_recv(sock, 4096)).startswith(b"1 rsp ")
        # empty messages: answered without a store, so the answers outgrow what is sent
        frame = b"2 syslog 0\n"
        pending, total = b"", 0
        stalled_since: float | None = None
        # send until the socket has taken nothing for 0.5 s: a fixed window on purpose, as it
        # measures an absence (the relay reading no more while its answers are not taken)
        while stalled_since is None or time.monotonic() - stalled_since < 0.5:
            assert total < 64 << 20, "the relay kept reading from a peer that reads nothing"
            pending = pending or frame * 1000
            try:
                n = sock.send(pending)
            except BlockingIOError:
                stalled_since = stalled_since or time.monotonic()
                await asyncio.sleep(0.02)
                continue
            pending, total, stalled_since = pending[n:], total + n, None
        assert source.listener.connections == 1
        sock.close()
