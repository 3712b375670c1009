"""TCP and UDP sources against hostile and hurried peers: connection limits, length prefixes
over the frame limit, a graceful shutdown that reads what the kernel holds, a bounded UDP
backlog. Real sockets on 127.0.0.1, a real spool behind them."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import socket
import struct
import termios
import time
from pathlib import Path

import orjson
import pytest

from relay.sources import syslog
from relay.sources.syslog import SyslogSource
from relay.spool import SqliteSpool, list_dead_letters
from tests.helpers import InProcessRelay, eventually, make_event

MAX_EVENT = 4096
LOCAL = "127.0.0.1:0"


async def open_syslog(
    tmp_path: Path, *, max_event: int = MAX_EVENT, udp: str = "", **cfg: object
) -> tuple[SqliteSpool, SyslogSource]:
    relay = await InProcessRelay.open(tmp_path, max_event_bytes=max_event)
    return relay.spool, await relay.start_syslog(LOCAL, udp, **cfg)


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float = 3.0) -> bool:
    """True when the relay closes the connection within `timeout` (EOF or a reset)."""
    try:
        while await asyncio.wait_for(reader.read(65536), timeout):
            pass
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return True


def unread(sock: socket.socket) -> int:
    """Bytes the kernel holds unread on `sock` (for UDP: the size of the next datagram)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]


def octets(msg: bytes) -> bytes:
    return b"%d %s" % (len(msg), msg)


# -- connection limit -----------------------------------------------------------------------------


async def test_connections_over_the_limit_are_closed_at_once(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, "relay.sources")
    spool, source = await open_syslog(tmp_path, max_connections=2)
    tcp = source.tcp
    assert tcp is not None
    port = source.tcp_port
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    await eventually(lambda: tcp.connections == 2, what="two connections open")
    extra = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    for reader, _ in extra:
        assert await closed_by_peer(reader), "a connection over the limit stayed open"
    assert tcp.connections == 2
    assert tcp.refused_connections == 3
    burst = [m for m in caplog.messages if "ingest.syslog.max_connections" in m]
    assert len(burst) == 1, burst  # once per burst, not once per connection
    # the held connections still work, and a freed place is taken again
    event = make_event()
    held[0][1].write(orjson.dumps(event) + b"\n")
    held[1][1].close()
    await eventually(lambda: tcp.connections == 1, what="a place freed")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await eventually(lambda: tcp.connections == 2, what="the new connection admitted")
    late = make_event()
    writer.write(orjson.dumps(late) + b"\n")
    await writer.drain()
    await eventually(lambda: spool.stats().events == 2, what="both events stored")
    for _, w in [*held, (reader, writer)]:
        w.close()
    await source.close()
    await spool.close()


async def test_json_lines_listener_has_its_own_connection_limit(tmp_path: Path) -> None:
    relay = await InProcessRelay.open(tmp_path)
    spool, source = relay.spool, await relay.start_json_lines(LOCAL, max_connections=1)
    assert source.tcp is not None
    _, first = await asyncio.open_connection("127.0.0.1", source.port)
    await eventually(lambda: source.tcp.connections == 1, what="one connection open")
    reader, second = await asyncio.open_connection("127.0.0.1", source.port)
    assert await closed_by_peer(reader)
    assert source.tcp.refused_connections == 1
    first.close()
    second.close()
    await source.close()
    await spool.close()


# -- octet counts over the limit ------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [b"9999999999 ", b"99999 ", b"9" * 40 + b" "])
async def test_octet_count_over_the_limit_is_dead_lettered_and_closes(
    tmp_path: Path, prefix: bytes
) -> None:
    # once, the reader skipped the declared length (up to 10 GB) while holding the connection
    spool, source = await open_syslog(tmp_path)
    before, after = make_event(), make_event()
    reader, writer = await asyncio.open_connection("127.0.0.1", source.tcp_port)
    writer.write(octets(orjson.dumps(before)) + prefix + b"h" * 3000)
    await writer.drain()
    assert await closed_by_peer(reader), "the connection stayed open after the prefix"
    with pytest.raises(OSError):  # the relay reads nothing more from it
        for _ in range(50):
            writer.write(orjson.dumps(after) + b"\n")
            await writer.drain()
            await asyncio.sleep(0.01)
    await eventually(lambda: spool.stats().dead_letters == 1, what="the dead letter")
    (letter,) = list_dead_letters(tmp_path / "spool")
    assert letter.reason == "too_large"
    assert letter.body.startswith(prefix + b"hhh")
    assert len(letter.body) <= 1024
    assert "over the limit" in letter.last_error and "closed" in letter.last_error
    assert spool.stats().events == 1  # the frame before it; nothing after it
    assert source.tcp is not None and source.tcp.broken_connections == 1
    writer.close()
    await source.close()
    await spool.close()


# -- graceful shutdown ----------------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["lines", "octets"])
async def test_close_reads_what_the_kernel_already_holds(tmp_path: Path, framing: str) -> None:
    spool, source = await open_syslog(tmp_path)
    tcp = source.tcp
    assert tcp is not None
    sock = socket.create_connection(("127.0.0.1", source.tcp_port))
    try:
        await eventually(lambda: tcp.connections == 1, what="the connection accepted")
        events = [make_event() for _ in range(300)]
        if framing == "lines":
            stream = b"".join(orjson.dumps(e) + b"\n" for e in events)
        else:
            stream = b"".join(octets(orjson.dumps(e)) for e in events)
        # the event loop is not running during sendall: every byte is in the kernel, unread,
        # when close() begins, which is what a restart meets on a busy connection
        sock.sendall(stream)
        await source.close()
        assert spool.stats().events == len(events)
    finally:
        sock.close()
        await spool.close()


async def test_close_drain_is_bounded_for_a_sender_that_never_stops(tmp_path: Path) -> None:
    spool, source = await open_syslog(tmp_path)
    tcp = source.tcp
    assert tcp is not None
    _, writer = await asyncio.open_connection("127.0.0.1", source.tcp_port)
    stop = asyncio.Event()

    async def flood() -> None:
        line = orjson.dumps(make_event()) + b"\n"
        with pytest.raises(OSError):
            while not stop.is_set():
                writer.write(line * 50)
                await writer.drain()

    sender = asyncio.create_task(flood())
    await eventually(lambda: spool.stats().events > 0, what="the flood arriving")
    started = time.monotonic()
    await source.close()
    assert time.monotonic() - started < 5
    stop.set()
    writer.close()
    await asyncio.wait_for(sender, 5)
    await spool.close()


# -- UDP backlog ----------------------------------------------------------------------------------


async def test_udp_backlog_is_bounded_in_bytes(tmp_path: Path, monkeypatch) -> None:
    bound = 200_000
    monkeypatch.setattr(syslog, "UDP_MAX_PENDING_BYTES", bound, raising=False)
    spool, source = await open_syslog(tmp_path, max_event=65_000, udp=LOCAL)
    udp = source.udp
    assert udp is not None
    # a spool that takes its time: datagrams pile up in the relay meanwhile
    gate = asyncio.Event()
    submit = udp.intake.submit

    async def slow_submit(*args: object, **kwargs: object) -> object:
        await gate.wait()
        return await submit(*args, **kwargs)

    monkeypatch.setattr(udp.intake, "submit", slow_submit)
    datagram = b"x" * 60_000  # within the frame limit: held whole until stored
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(40):
            s.sendto(datagram, ("127.0.0.1", source.udp_port))
            await eventually(
                lambda: unread(udp._sock) == 0 or getattr(udp, "reading_paused", False),
                timeout=2,
                what="the datagram read or reading paused",
            )
    pending = sum(map(len, udp._pending))
    assert pending <= bound + len(datagram), f"{pending} bytes held, over the bound of {bound}"
    gate.set()
    await eventually(lambda: not udp._pending and not udp.reading_paused, what="the backlog stored")
    assert spool.stats().dead_letters >= bound // len(datagram)
    await source.close()
    await spool.close()


# -- logger_name ----------------------------------------------------------------------------------


async def test_syslog_event_of_another_logger_is_dead_lettered_with_the_reason(
    tmp_path: Path,
) -> None:
    spool, source = await open_syslog(tmp_path)
    other = orjson.dumps(make_event(logger_name="no.difi.meldingsutveksling.App"))
    status = make_event(logger_name="STATUS")
    _, writer = await asyncio.open_connection("127.0.0.1", source.tcp_port)
    writer.write(b"<14>1 - host app - - - " + other + b"\n" + orjson.dumps(status) + b"\n")
    await writer.drain()
    writer.close()
    await eventually(lambda: spool.stats().dead_letters == 1 and spool.stats().events == 1)
    (letter,) = list_dead_letters(tmp_path / "spool")
    assert letter.reason == "invalid"
    assert 'logger_name must be "STATUS"' in letter.last_error
    assert "no.difi.meldingsutveksling.App" in letter.last_error
    await source.close()
    await spool.close()


async def test_connection_counts_reach_the_metrics(tmp_path: Path) -> None:
    from relay.ops import collectors

    spool, source = await open_syslog(tmp_path, max_connections=1)
    try:
        first = await asyncio.open_connection("127.0.0.1", source.tcp_port)
        await eventually(lambda: source.tcp.connections == 1, what="the first connection")
        second = await asyncio.open_connection("127.0.0.1", source.tcp_port)
        assert await closed_by_peer(second[0])

        def values() -> dict[str, float]:
            found = {}
            metrics = collectors.tcp_connections({"syslog_tcp": source.tcp, "json_lines": None})
            for family in metrics:
                for sample in family.samples:
                    found[sample.name] = sample.value
                    assert sample.labels == {"source": "syslog_tcp"}
            return found

        await eventually(lambda: values().get("relay_tcp_connections_refused_total") == 1)
        assert values()["relay_tcp_connections"] == 1
        assert values()["relay_tcp_connections_broken_total"] == 0
        first[1].close()
        second[1].close()
    finally:
        await source.close()
        await spool.close()
