"""Syslog source: status events as the MSG of syslog messages, over TCP and UDP.

Over TCP (`ingest.syslog.tcp_listen`, source `syslog_tcp`) frames are RFC 6587 octet-counted or
newline-delimited, detected per frame, and every frame read is stored before more is read (see
`relay.sources.tcp`): a full spool blocks the sender through TCP flow control, it never loses a
frame. Headers may be RFC 5424 or RFC 3164 (see `relay.sources.syslog_header`).

Over UDP (`ingest.syslog.udp_listen`, source `syslog_udp`) each datagram is one message. UDP has
no acknowledgement and no flow control, so the relay cannot push back and these are lost:

- datagrams that arrive while the spool refuses events (full, or a failing disk): counted in
  ``relay_rejected_events_total{source="syslog_udp",reason="spool_full"|"spool_unavailable"}``
  and logged once per episode;
- datagrams the kernel drops because the socket's receive buffer overflowed (a burst faster than
  the relay stores, or reading paused while a backlog is stored): counted by the kernel only,
  see `SyslogSource.kernel_drops()`;
- datagrams lost in the network or cut short by the sender (many senders truncate UDP messages
  at 1-8 KiB): the relay never learns of them;
- datagrams received but not yet stored (at most a few milliseconds' worth) when the relay is
  killed.

Use TCP, or HTTP, wherever a lost status matters.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass

from relay.config import SyslogIngestConfig, parse_listen
from relay.errors import UserError
from relay.event import EventError, not_status, other_logger
from relay.sources.intake import Intake
from relay.sources.syslog_framing import HEAD_BYTES, Frame
from relay.sources.syslog_header import decode_event
from relay.sources.tcp import Convert, Item, Refusals, TcpIngest, show_address
from relay.sources.tls import ListenerTLS
from relay.spool import Incoming, Reject, SpoolRefused

__all__ = ["HEADER_ALLOWANCE", "SOURCE_TCP", "SOURCE_UDP", "SyslogSource", "start_syslog"]

log = logging.getLogger("relay.sources.syslog")

SOURCE_TCP = "syslog_tcp"
SOURCE_UDP = "syslog_udp"
# Room for the syslog header (and structured data) around an event of max_event_bytes.
HEADER_ALLOWANCE = 8 * 1024

UDP_BATCH_SECONDS = 0.005
UDP_BATCH_DATAGRAMS = 500
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024
# Datagrams waiting while a batch is stored; beyond this many, or this many bytes, the socket is
# left unread and the kernel's buffer takes the burst (and, when that overflows, counts what it
# drops). The byte bound is what bounds memory: 20 000 datagrams of 64 KiB would be 1.3 GB.
UDP_MAX_PENDING = 20_000
UDP_MAX_PENDING_BYTES = 16 * 1024 * 1024


def syslog_converter(intake: Intake, source: str) -> Convert:
    """Turn one syslog frame into an event, or a dead letter with its raw text.

    Unlike a JSON-lines appender, a syslog sender forwards what was meant as a status event, so
    one with another `logger_name` is dead-lettered (the service would acknowledge it and then
    file it as a general log), never skipped; that is said before any other fault it has."""

    def convert(frame: Frame) -> Item:
        if frame.problem is not None:
            return intake.reject(frame.evidence, frame.problem, source, frame.reason)
        try:
            value = decode_event(frame.data)
        except EventError as exc:
            return intake.reject(frame.data, str(exc), source)
        name = other_logger(value)
        if name is not None:
            return intake.reject(frame.data, str(not_status(name)), source)
        return intake.item(value, frame.data, source)

    return convert


@dataclass
class SyslogSource:
    """The running syslog listeners; either may be off (None)."""

    tcp: TcpIngest | None
    udp: UdpIngest | None

    @property
    def tcp_port(self) -> int | None:
        return self.tcp.port if self.tcp is not None else None

    @property
    def udp_port(self) -> int | None:
        return self.udp.port if self.udp is not None else None

    def kernel_drops(self) -> int | None:
        """Datagrams the kernel dropped on the UDP socket, or None when unknown or UDP is off."""
        return self.udp.kernel_drops() if self.udp is not None else None

    async def close(self) -> None:
        """Stop listening; return once what was read is stored (or its loss logged)."""
        await asyncio.gather(*(part.close() for part in (self.tcp, self.udp) if part is not None))


async def start_syslog(
    cfg: SyslogIngestConfig, intake: Intake, tls: ListenerTLS | None = None
) -> SyslogSource:
    """Start the listeners `cfg` enables (an empty address is off), TCP with `tls` when given
    (RFC 5425: octet-counted frames inside TLS); raises UserError when one cannot listen."""
    max_frame = intake.max_event_bytes + HEADER_ALLOWANCE
    tcp = udp = None
    if cfg.tcp_listen:
        tcp = TcpIngest(
            intake,
            source=SOURCE_TCP,
            setting="ingest.syslog.tcp_listen",
            max_frame=max_frame,
            convert=syslog_converter(intake, SOURCE_TCP),
            octet_counting=True,
            max_connections=cfg.max_connections,
        )
        await tcp.start(cfg.tcp_listen, tls.context if tls is not None else None)
    if cfg.udp_listen:
        udp = UdpIngest(intake, max_frame)
        try:
            await udp.start(cfg.udp_listen)
        except BaseException:
            if tcp is not None:
                await tcp.close()
            raise
    tcp_kind = f"tcp+{tls.describe()}" if tls is not None else "tcp"
    listening = [
        f"{kind} {part.address}"
        for kind, part in ((tcp_kind, tcp), ("udp", udp))
        if part is not None
    ]
    if listening:
        log.info("syslog: listening on %s", " and ".join(listening))
    return SyslogSource(tcp, udp)


class UdpIngest(asyncio.DatagramProtocol):
    """The UDP listener: datagrams batched for a few milliseconds, then stored."""

    setting = "ingest.syslog.udp_listen"

    def __init__(self, intake: Intake, max_frame: int) -> None:
        self.intake = intake
        self.max_frame = max_frame
        self.port: int | None = None
        self.address = ""
        self._convert = syslog_converter(intake, SOURCE_UDP)
        self._transport: asyncio.DatagramTransport | None = None
        self._sock: socket.socket | None = None
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.reading_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._worker: asyncio.Task[None] | None = None
        self._refusals = Refusals(
            SOURCE_UDP,
            "datagrams received meanwhile are lost (counted in relay_rejected_events_total)",
            lost=True,
        )

    async def start(self, listen: str) -> None:
        host, port = parse_listen(listen, self.setting)
        loop = asyncio.get_running_loop()
        try:
            sock = _bind_udp(host, port)
        except OSError as exc:
            raise UserError(
                f"cannot listen on {listen} ({self.setting}): {exc.strerror or exc}; "
                "choose a free address"
            ) from None
        self._sock = sock
        self.port = sock.getsockname()[1]
        self.address = show_address(host, self.port)
        self.intake.declare(SOURCE_UDP)
        transport, _ = await loop.create_datagram_endpoint(lambda: self, sock=sock)
        self._transport = transport

    def kernel_drops(self) -> int | None:
        if self._sock is None or self._sock.fileno() < 0:
            return None
        return udp_kernel_drops(self._sock)

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._flush()
        if self._worker is not None:
            await asyncio.shield(self._worker)

    # -- asyncio callbacks -----------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: object) -> None:
        if len(data) > self.max_frame:
            # only its head becomes the dead letter: do not hold the rest meanwhile
            data = _Oversized(data[:HEAD_BYTES], len(data))
        self._pending.append(data)
        self._pending_bytes += len(data)
        if len(self._pending) >= UDP_BATCH_DATAGRAMS:
            self._flush()
        elif self._timer is None and self._worker is None:
            self._timer = asyncio.get_running_loop().call_later(UDP_BATCH_SECONDS, self._flush)
        if self._over_backlog() and self._transport is not None and not self.reading_paused:
            self._transport.pause_reading()
            self.reading_paused = True

    def _over_backlog(self) -> bool:
        return len(self._pending) >= UDP_MAX_PENDING or self._pending_bytes >= UDP_MAX_PENDING_BYTES

    def error_received(self, exc: Exception) -> None:
        log.debug("syslog_udp: %s", exc)

    # -- the work --------------------------------------------------------------------------------

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._worker is None and self._pending:
            self._worker = asyncio.get_running_loop().create_task(self._store_pending())

    async def _store_pending(self) -> None:
        # datagrams that arrive while one batch is stored form the next: a group commit
        try:
            while self._pending:
                batch = self._pending[:UDP_BATCH_DATAGRAMS]
                del self._pending[:UDP_BATCH_DATAGRAMS]
                self._pending_bytes -= sum(map(len, batch))
                await self._store(batch)
                paused = self._transport is not None and self.reading_paused
                if paused and not self._over_backlog():
                    self._transport.resume_reading()
                    self.reading_paused = False
        finally:
            self._worker = None

    async def _store(self, datagrams: list[bytes]) -> None:
        items = [item for data in datagrams if (item := self._item(data)) is not None]
        events = [i for i in items if isinstance(i, Incoming)]
        rejects = [i for i in items if isinstance(i, Reject)]
        try:
            await self.intake.submit(SOURCE_UDP, events, rejects)
        except SpoolRefused as exc:
            self._refusals.refused(exc, len(items))
        except Exception:
            log.exception("syslog_udp: %d datagram(s) were not stored", len(items))
        else:
            self._refusals.stored()

    def _item(self, data: bytes) -> Item | None:
        if isinstance(data, _Oversized):
            frame = Frame(
                bytes(data),
                data.size,
                f"datagram of {data.size} bytes is over the limit of {self.max_frame} bytes; "
                f"only its first {HEAD_BYTES} bytes are kept",
                "too_large",
            )
        elif not data.strip():
            return None  # an empty datagram carries nothing
        else:
            frame = Frame(data, len(data))
        return self._convert(frame)


class _Oversized(bytes):
    """The head of a datagram over the limit, with the datagram's real size."""

    size: int

    def __new__(cls, head: bytes, size: int) -> _Oversized:
        self = super().__new__(cls, head)
        self.size = size
        return self


def _bind_udp(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        _grow_receive_buffer(sock)
        sock.bind(address)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _grow_receive_buffer(sock: socket.socket) -> None:
    """A bigger kernel buffer absorbs bursts while a batch is stored; best effort, since
    net.core.rmem_max caps what an unprivileged process may ask for."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
        got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    except OSError:
        return
    if got < UDP_RECEIVE_BUFFER:  # Linux reports twice what it grants
        log.info(
            "syslog_udp: the receive buffer is %d bytes, less than the %d asked for; raise "
            "net.core.rmem_max to absorb larger bursts",
            got,
            UDP_RECEIVE_BUFFER,
        )


def udp_kernel_drops(sock: socket.socket) -> int | None:
    """The "drops" column of /proc/net/udp{,6} for `sock`, or None where there is none."""
    try:
        inode = str(os.fstat(sock.fileno()).st_ino)
    except OSError:
        return None
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table, encoding="ascii") as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) >= 13 and fields[9] == inode:
                        return int(fields[12])
        except (OSError, ValueError):
            continue
    return None
