"""`ListenerTLS.reload`: a certificate renewed on disk is shown by the next handshake of the
running listener, connections already open carry on, and a broken renewal changes nothing."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.errors import UserError
from relay.sources.tls import ListenerTLS
from tests.helpers import InProcessRelay, inprocess_relay, make_event
from tests.helpers.tls import TlsPki, make_tls_pki, peer_serial, renew_server_cert, serial_of
from tests.helpers.tls_listener import KINDS, Listener, close_writer, started


@pytest.fixture
def pki(tmp_path: Path) -> TlsPki:
    return make_tls_pki(tmp_path / "pki")


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[InProcessRelay]:
    async with inprocess_relay(tmp_path) as r:
        yield r


def reload(tls: ListenerTLS) -> None:
    tls.reload(tls.files.cert, tls.files.key, tls.files.client_ca)


async def shown_serial(listener: Listener, context: ssl.SSLContext) -> int:
    serial, _ = await listener.send(context, [make_event()])
    return serial


@pytest.mark.parametrize("kind", KINDS)
async def test_renewed_certificate_is_shown_after_reload_and_open_connections_go_on(
    relay: InProcessRelay, pki: TlsPki, kind: str
) -> None:
    listener = await started(relay, kind, pki)
    good = pki.good_client_context()
    old = serial_of(pki.server_cert)
    assert await shown_serial(listener, good) == old
    # a connection opened before the renewal, used after it (HTTP: keep-alive)
    reader, writer = await _open(listener, good)
    new = renew_server_cert(pki)
    assert await shown_serial(listener, good) == old  # renewed on disk only: not yet in use
    reload(listener.tls)
    assert await shown_serial(listener, good) == new
    again = listener.payload([make_event(), make_event()])
    if kind == "http":
        again = again.replace(b"Connection: close", b"Connection: keep-alive")
    writer.write(again)
    await writer.drain()
    if kind == "http":
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    await close_writer(writer)
    await relay.collect(5)  # 3 one by one, 2 over the connection that was open all along


@pytest.mark.parametrize(
    "breakage",
    ["garbage certificate", "key of another certificate", "certificate removed", "garbage CA"],
)
async def test_a_broken_renewal_is_refused_and_the_old_certificate_stays(
    relay: InProcessRelay, pki: TlsPki, breakage: str
) -> None:
    listener = await started(relay, "json_lines", pki)
    good, no_cert = pki.good_client_context(), pki.client_context()
    old = serial_of(pki.server_cert)
    if breakage == "garbage certificate":
        pki.server_cert.write_text("-----BEGIN CERTIFICATE-----\nnot one\n")
    elif breakage == "key of another certificate":
        pki.server_key.write_bytes(pki.client_key.read_bytes())
    elif breakage == "certificate removed":
        pki.server_cert.unlink()
    else:
        pki.ca_cert.write_text("nothing here\n")
    with pytest.raises(UserError) as error:
        reload(listener.tls)
    message = str(error.value)
    assert "\n" not in message and message.startswith("ingest.json_lines")
    assert "PRIVATE KEY" not in message
    assert await shown_serial(listener, good) == old  # the running context is untouched
    await listener.refused(no_cert)  # and still asks for a client certificate
    await relay.collect(1)


async def test_a_changed_client_ca_is_trusted_after_reload_and_said_so(
    relay: InProcessRelay, pki: TlsPki, caplog: pytest.LogCaptureFixture
) -> None:
    listener = await started(relay, "syslog", pki)
    other = pki.client_context(cert=pki.other_client_cert, key=pki.other_client_key)
    await listener.refused(other)
    both = pki.ca_cert.read_text() + pki.other_ca_cert.read_text()
    pki.ca_cert.write_text(both)
    with caplog.at_level(logging.WARNING, "relay.sources.tls"):
        reload(listener.tls)
    assert "tls_client_ca_file changed" in caplog.text
    await listener.send(other, [make_event()])
    await relay.collect(1)


async def _open(listener: Listener, context: ssl.SSLContext):

    reader, writer = await asyncio.open_connection(
        "127.0.0.1", listener.port, ssl=context, server_hostname="localhost"
    )
    assert peer_serial(writer.get_extra_info("ssl_object")) == serial_of(listener.tls.files.cert)
    return reader, writer


async def test_a_renewal_written_during_reload_cannot_break_the_live_context(
    relay: InProcessRelay, pki: TlsPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenSSL swaps a context's certificate before it checks the key: loading a pair that does
    not match into the live context would leave it with no usable certificate. The files are
    read once, so the live context gets the pair the trial load checked, whatever lands on disk
    in between."""
    from relay.sources import tls as tls_module

    listener = await started(relay, "http", pki)
    new = renew_server_cert(pki)
    real_load = tls_module._load_into
    loads: list[ssl.SSLContext] = []

    def load_then_clobber(context, section, files, pem) -> None:
        real_load(context, section, files, pem)
        loads.append(context)
        if len(loads) == 1:  # after the trial load: a half-written renewal lands
            pki.server_key.write_bytes(pki.client_key.read_bytes())

    monkeypatch.setattr(tls_module, "_load_into", load_then_clobber)
    reload(listener.tls)
    assert loads[1] is listener.tls.context
    assert await shown_serial(listener, pki.good_client_context()) == new
