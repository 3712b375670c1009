"""The syslog source on real ports with a real spool behind it; also util-linux logger, rsyslog."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest

from relay.config import SyslogIngestConfig
from relay.errors import UserError
from relay.sources.intake import Intake
from relay.sources.syslog import start_syslog
from relay.spool import Incoming, SpoolRefused, list_dead_letters
from tests.helpers import InProcessRelay as Relay
from tests.helpers import eventually, inprocess_relay, make_event

REPO = Path(__file__).resolve().parents[2]
RSYSLOG_EXAMPLE = REPO / "deploy" / "rsyslog" / "relay.conf"
RSYSLOGD = "/usr/sbin/rsyslogd"
ANY_PORT = "127.0.0.1:0"


@asynccontextmanager
async def syslog_relay(tmp_path: Path, **spool) -> AsyncIterator[Relay]:
    """Syslog over TCP and UDP on free ports."""
    async with inprocess_relay(tmp_path, **spool) as r:
        await r.start_syslog()
        yield r


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[Relay]:
    async with syslog_relay(tmp_path) as r:
        yield r


async def send_tcp(port: int, data: bytes, *, close: bool = True) -> asyncio.StreamWriter:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    if close:
        writer.close()
        await writer.wait_closed()
    return writer


def send_udp(port: int, *datagrams: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for d in datagrams:
            s.sendto(d, ("127.0.0.1", port))


def octets(msg: bytes) -> bytes:
    return b"%d %s" % (len(msg), msg)


def rfc5424(event: dict) -> bytes:
    return b'<14>1 2024-05-01T10:00:00Z host app 17 - [x@1 a="b"] \xef\xbb\xbf' + orjson.dumps(
        event
    )


def rfc3164(event: dict) -> bytes:
    return b"<14>May  1 10:00:00 host app[17]: @cee: " + orjson.dumps(event)


def ids(events: list[dict]) -> set[str]:
    return {e["message_id"] for e in events}


# -- TCP ------------------------------------------------------------------------------------------


async def test_tcp_frames_of_both_framings_land(relay: Relay) -> None:
    events = [make_event() for _ in range(4)]
    stream = (
        octets(rfc5424(events[0]))
        + rfc3164(events[1])
        + b"\n"
        + octets(orjson.dumps(events[2]))
        + orjson.dumps(events[3])
        + b"\r\n"
    )
    await send_tcp(relay.syslog.tcp_port, stream)
    assert ids(await relay.collect(4)) == ids(events)
    assert relay.spool.stats().events == 4
    assert relay.spool.stats().dead_letters == 0


async def test_invalid_frame_is_dead_lettered_and_the_connection_goes_on(
    relay: Relay, tmp_path: Path
) -> None:
    bad = b"<14>May  1 10:00:00 host app: this is no event, personal number 12345678901"
    invalid_event = orjson.dumps(make_event(status="NOPE"))
    good = make_event()
    writer = await send_tcp(relay.syslog.tcp_port, bad + b"\n" + invalid_event + b"\n", close=False)
    await eventually(lambda: relay.spool.stats().dead_letters == 2)
    writer.write(octets(rfc5424(good)))
    await writer.drain()
    assert ids(await relay.collect(1)) == {good["message_id"]}
    writer.close()
    letters = list_dead_letters(tmp_path / "spool")
    assert [(d.source, d.reason) for d in letters] == [("syslog_tcp", "invalid")] * 2
    assert b"this is no event" in letters[0].body
    assert b"12345678901" not in letters[0].body  # scrubbed
    assert "not a JSON event" in letters[0].last_error
    assert letters[1].body == invalid_event
    assert "NOPE" in letters[1].last_error
    await eventually(lambda: relay.rejected("syslog_tcp", "invalid") == 2)


async def test_oversized_lines_are_dead_lettered_and_the_connection_goes_on(
    relay: Relay, tmp_path: Path
) -> None:
    # (an octet count over the limit closes the connection: see tests/sources/test_tcp_limits.py)
    huge = b"h" * 200_000
    long_line = b"l" * 30_000
    good = make_event()
    stream = huge + b"\n" + long_line + b"\n" + orjson.dumps(good) + b"\n"
    writer = await send_tcp(relay.syslog.tcp_port, stream, close=False)
    assert ids(await relay.collect(1)) == {good["message_id"]}
    letters = list_dead_letters(tmp_path / "spool")
    assert [(d.reason, d.body) for d in letters] == [
        ("too_large", b"h" * 1024),
        ("too_large", b"l" * 1024),
    ]
    assert "200000 bytes" in letters[0].last_error
    assert "30000 bytes" in letters[1].last_error
    await eventually(lambda: relay.rejected("syslog_tcp", "too_large") == 2)
    writer.close()


async def test_last_frame_without_newline_at_eof_is_stored(relay: Relay) -> None:
    event = make_event()
    await send_tcp(relay.syslog.tcp_port, rfc3164(event))
    assert ids(await relay.collect(1)) == {event["message_id"]}


async def test_close_stores_what_was_read(relay: Relay) -> None:
    event = make_event()
    # no newline and the connection stays open: only the relay's shutdown ends the frame
    writer = await send_tcp(relay.syslog.tcp_port, orjson.dumps(event), close=False)
    await eventually(lambda: relay.syslog.tcp.connections == 1, what="the connection")
    assert relay.spool.stats().events == 0
    await relay.close_sources()
    assert relay.spool.stats().events == 1
    writer.close()


async def test_tiny_spool_loses_nothing_sent_over_tcp(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, "relay.sources")
    # room for a handful of events: most of the stream waits in the relay and the kernel
    async with syslog_relay(tmp_path, max_bytes=6000) as r:
        events = [make_event() for _ in range(20)]
        stream = b"".join(octets(rfc5424(e)) for e in events)
        await send_tcp(r.syslog.tcp_port, stream)
        assert ids(await r.collect(20, timeout=20, ack=True)) == ids(events)
        assert r.rejected("syslog_tcp", "spool_full") > 0  # refused attempts, all retried
        refusals = [m for m in caplog.messages if "refuses events" in m]
        assert len(refusals) == 1, refusals  # per episode, not per retry


async def test_full_spool_blocks_the_tcp_sender_until_it_has_room(tmp_path: Path) -> None:
    async with syslog_relay(tmp_path, max_bytes=4 << 20) as r:  # small: quick to fill
        padding = "p" * 3000
        while True:  # fill the spool from another source until it refuses
            batch = [
                Incoming(orjson.dumps(make_event(description=padding)), "http") for _ in range(500)
            ]
            try:
                await r.intake.submit("http", batch)
            except SpoolRefused:
                break
        loop = asyncio.get_running_loop()
        sock = socket.create_connection(("127.0.0.1", r.syslog.tcp_port))
        sock.setblocking(False)
        sent: set[str] = set()
        pending = b""
        total = 0
        stalled_since: float | None = None
        # send until the socket has taken nothing for 0.5 s: a fixed window on purpose, as it
        # measures an absence (the relay reading no more while its spool refuses)
        while stalled_since is None or time.monotonic() - stalled_since < 0.5:
            assert total < 256 << 20, "the relay kept reading while the spool refused"
            if not pending:
                event = make_event(description="s" * 3000)
                sent.add(event["message_id"])
                pending = orjson.dumps(event) + b"\n"
            try:
                n = sock.send(pending)
            except BlockingIOError:
                stalled_since = stalled_since or time.monotonic()
                await asyncio.sleep(0.02)
                continue
            pending, total, stalled_since = pending[n:], total + n, None
        # the sender is blocked by TCP flow control; make room and every frame it sent arrives
        rest = asyncio.create_task(loop.sock_sendall(sock, pending))
        got = await r.collect(
            len(sent), timeout=30, ack=True, where=lambda e: e["description"][0] == "s"
        )
        await rest
        sock.close()
        assert ids(got) == sent


# -- UDP ------------------------------------------------------------------------------------------


async def test_udp_datagrams_land(relay: Relay, tmp_path: Path) -> None:
    events = [make_event() for _ in range(3)]
    send_udp(
        relay.syslog.udp_port,
        rfc5424(events[0]),
        rfc3164(events[1]) + b"\n",
        orjson.dumps(events[2]),
        b"not an event",
        b"x" * 20_000,
    )
    assert ids(await relay.collect(3)) == ids(events)
    await eventually(lambda: relay.spool.stats().dead_letters == 2)
    letters = list_dead_letters(tmp_path / "spool")
    assert {(d.source, d.reason, len(d.body)) for d in letters} == {
        ("syslog_udp", "invalid", 12),
        ("syslog_udp", "too_large", 1024),
    }
    assert relay.syslog.kernel_drops() == 0


async def test_udp_datagrams_are_lost_and_counted_when_the_spool_refuses(
    tmp_path: Path, caplog
) -> None:
    caplog.set_level(logging.WARNING, "relay.sources")
    async with syslog_relay(tmp_path, max_bytes=100) as r:
        source = r.syslog
        for sent in range(1, 4):  # three batches, three refusals
            send_udp(source.udp_port, orjson.dumps(make_event()))
            await eventually(lambda n=sent: r.rejected("syslog_udp", "spool_full") == n)
        assert r.spool.stats().events == 0
        assert len([m for m in caplog.messages if "syslog_udp: the spool refuses" in m]) == 1
        await r.close_sources()
        assert source.kernel_drops() is None


# -- listening ------------------------------------------------------------------------------------


async def test_listen_failures_name_the_setting(tmp_path: Path) -> None:
    async with inprocess_relay(tmp_path) as relay:
        await _listen_failures_name_the_setting(relay.intake)


async def _listen_failures_name_the_setting(intake: Intake) -> None:
    with socket.socket() as busy_tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy_udp:
        busy_tcp.bind(("127.0.0.1", 0))
        busy_tcp.listen()
        busy_udp.bind(("127.0.0.1", 0))
        cases = [
            (SyslogIngestConfig(tcp_listen=f"127.0.0.1:{busy_tcp.getsockname()[1]}"), "tcp_listen"),
            (SyslogIngestConfig(udp_listen=f"127.0.0.1:{busy_udp.getsockname()[1]}"), "udp_listen"),
            (SyslogIngestConfig(tcp_listen="192.0.2.1:6514"), "tcp_listen"),  # not this host's
            (SyslogIngestConfig(udp_listen=":514"), "udp_listen"),
            (
                SyslogIngestConfig(tcp_listen="127.0.0.1:0", udp_listen="192.0.2.1:514"),
                "udp_listen",
            ),
        ]
        for cfg, setting in cases:
            with pytest.raises(UserError, match=f"ingest\\.syslog\\.{setting}") as info:
                await start_syslog(cfg, intake)
            assert "\n" not in str(info.value)
    off = await start_syslog(SyslogIngestConfig(), intake)
    assert (off.tcp_port, off.udp_port, off.kernel_drops()) == (None, None, None)
    await off.close()


# -- real senders ---------------------------------------------------------------------------------

LOGGER = shutil.which("logger")


@pytest.mark.skipif(LOGGER is None, reason="util-linux logger is not installed")
@pytest.mark.parametrize(
    "args",
    [
        ["--tcp", "--octet-count"],
        ["--tcp"],
        ["--tcp", "--rfc3164"],
        ["--udp"],
        ["--udp", "--rfc5424"],
        ["--udp", "--rfc3164"],
    ],
    ids=["tcp-octet-count", "tcp", "tcp-rfc3164", "udp", "udp-rfc5424", "udp-rfc3164"],
)
async def test_util_linux_logger(relay: Relay, args: list[str]) -> None:
    event = make_event()
    port = relay.syslog.tcp_port if "--tcp" in args else relay.syslog.udp_port
    target = ["-n", "127.0.0.1", "-P", str(port), "-t", "relay-test"]
    proc = await asyncio.create_subprocess_exec(LOGGER, *args, *target, orjson.dumps(event))
    assert await proc.wait() == 0
    assert ids(await relay.collect(1)) == {event["message_id"]}


@pytest.mark.skipif(
    not os.access(RSYSLOGD, os.X_OK),
    reason=f"{RSYSLOGD} is not installed (Debian/Ubuntu: apt-get install rsyslog)",
)
@pytest.mark.interop
async def test_rsyslog_forwards_with_the_shipped_config(tmp_path: Path) -> None:
    """rsyslogd with deploy/rsyslog/relay.conf (only the port changed) forwards status events,
    and keeps them in its queue while the relay is not there yet."""
    # The relay's port goes into rsyslog's config before the relay listens (the test is that
    # rsyslog queues meanwhile), so it is picked here, not by the relay. Held bound (a bound
    # socket that does not listen refuses connections, as no listener would) until the relay
    # takes it, so that no other process can take it in between.
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    relay_port = held.getsockname()[1]
    work = tmp_path / "rsyslog"
    work.mkdir()
    example = RSYSLOG_EXAMPLE.read_text()
    assert example.count('port="6514"') == 1
    (work / "relay.conf").write_text(example.replace('port="6514"', f'port="{relay_port}"'))
    conf = work / "rsyslog.conf"
    input_port_file = work / "input.port"  # rsyslog listens on port 0 and writes what it got
    conf.write_text(
        f'global(workDirectory="{work}")\n'
        'module(load="imtcp")\n'
        'input(type="imtcp" address="127.0.0.1" port="0" '
        f'listenPortFileName="{input_port_file}")\n'
        f'include(file="{work / "relay.conf"}")\n'
    )
    log_file = open(work / "rsyslogd.log", "wb")  # noqa: SIM115 - handed to the child
    pidfile = work / "rsyslogd.pid"
    proc = await asyncio.create_subprocess_exec(
        RSYSLOGD, "-n", "-f", conf, "-i", pidfile, stdout=log_file, stderr=log_file
    )
    log_file.close()
    r = await Relay.open(tmp_path)
    try:
        await eventually(
            lambda: input_port_file.exists() and input_port_file.read_text().strip(),
            15,
            "rsyslogd to say which port it listens on",
            lambda: (work / "rsyslogd.log").read_text(),
        )
        input_port = int(input_port_file.read_text())
        producer = await connect_when_up(input_port, proc, work / "rsyslogd.log")

        def line(tag: str, event: dict) -> bytes:
            return b"<13>May  1 10:00:00 producer %s: %s\n" % (tag.encode(), orjson.dumps(event))

        early, other, late = make_event(), make_event(), make_event()
        # the relay is not listening yet: rsyslog's queue keeps the event
        producer.write(line("eformidling-status", early) + line("something-else", other))
        await producer.drain()
        await asyncio.sleep(0.5)  # a fixed pause on purpose: rsyslog tries, and queues
        held.close()
        await r.start_syslog(tcp=f"127.0.0.1:{relay_port}", udp="")
        assert ids(await r.collect(1, timeout=20)) == {early["message_id"]}
        producer.write(line("eformidling-status", late))
        await producer.drain()
        assert ids(await r.collect(2, timeout=20)) == {early["message_id"], late["message_id"]}
        producer.close()
        await asyncio.sleep(0.2)
        assert (r.spool.stats().events, r.spool.stats().dead_letters) == (2, 0)
    finally:
        held.close()
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
        await r.close()


async def connect_when_up(port: int, proc, log: Path) -> asyncio.StreamWriter:
    writers: list[asyncio.StreamWriter] = []

    async def connected() -> bool:
        if proc.returncode is not None:
            raise AssertionError(f"rsyslogd exited:\n{log.read_text()}")
        try:
            writers.append((await asyncio.open_connection("127.0.0.1", port))[1])
        except OSError:
            return False
        return True

    await eventually(connected, 15, "rsyslogd to listen")
    return writers[0]


async def test_event_over_the_limit_names_the_ingest_setting(relay: Relay, tmp_path: Path) -> None:
    big, good = make_event(description="d" * 5000), make_event()
    await send_tcp(relay.syslog.tcp_port, octets(rfc5424(big)) + octets(rfc5424(good)))
    assert ids(await relay.collect(1)) == {good["message_id"]}
    [letter] = list_dead_letters(tmp_path / "spool")
    assert "over the limit of 4096 (ingest.max_event_bytes)" in letter.last_error
    assert "ingest.http" not in letter.last_error
