"""TCP listeners with the spool as back-pressure: what is read is stored before more is read.

Every frame read from a connection is stored within one group commit of being read: the frames
that one read completes form a batch (at most `MAX_BATCH_FRAMES` frames / `MAX_BATCH_BYTES`),
and the connection is not read again until the spool has committed that batch. When the spool
refuses (full, or the disk fails), the batch is kept and retried; the connection stays unread
meanwhile, so its kernel buffers fill and the TCP window stops the sender. Nothing that was read
is dropped: not when the spool refuses, not when the sender disconnects.

What plain TCP cannot give: the sender's kernel got TCP ACKs for bytes that are still in our
kernel's receive buffer, so bytes not yet read when the relay dies are lost without the sender
knowing. Only an application-level acknowledgement (RELP, HTTP) closes that gap. A graceful
shutdown narrows it: `close` stops accepting, then goes on reading every open connection until
its receive queue is empty (at most `DRAIN_SECONDS`), so a routine restart stores what the
senders' kernels believe delivered instead of resetting it.

Hostile peers stay bounded: at most `max_connections` are open at once (more are closed as soon
as they are accepted), and an octet count over the frame limit closes its connection (see
`relay.sources.syslog_framing`).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import ssl
import struct
import termios
from collections.abc import Callable

from relay.sources.intake import Intake
from relay.sources.listening import RETRY_MAX, Item, Listening, show_address
from relay.sources.refusals import Refusals
from relay.sources.syslog_framing import Frame, FrameReader
from relay.spool import Incoming

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_BATCH_FRAMES",
    "Convert",
    "Item",
    "Refusals",
    "TcpIngest",
    "batch_length",
    "show_address",
]

log = logging.getLogger("relay.sources.tcp")

MAX_BATCH_FRAMES = 1000
MAX_BATCH_BYTES = 1 << 20
# On close: how long open connections are read on until the kernel holds nothing unread. Long
# enough for a receive buffer's worth of frames; short enough for a restart not to drag.
DRAIN_SECONDS = 1.0

# A frame made into what is stored: an event, a dead letter, or None for a frame that is
# deliberately not kept (the converter counts it).
Convert = Callable[[Frame], Item | None]


class TcpIngest(Listening):
    """One TCP listener feeding `intake` as `source`; `convert` turns frames into items."""

    def __init__(
        self,
        intake: Intake,
        *,
        source: str,
        setting: str,
        max_frame: int,
        convert: Convert,
        octet_counting: bool,
        max_connections: int = 1024,
        retry_max: float = RETRY_MAX,
    ) -> None:
        super().__init__(
            intake,
            source=source,
            setting=setting,
            max_connections=max_connections,
            retry_max=retry_max,
            refusal_consequence="keeping what was read and reading no more until it is stored",
        )
        self.max_frame = max_frame
        self.convert = convert
        self.octet_counting = octet_counting
        self._connections: set[_Connection] = set()

    async def start(self, listen: str, tls: ssl.SSLContext | None = None) -> None:
        """Listen on `listen` ("host:port"), with TLS when `tls` is given; raises UserError
        naming the setting."""
        await self.listen(listen, tls, lambda: _Connection(self))

    async def close(self) -> None:
        """Stop accepting; read on what the kernel already holds for each open connection (at
        most DRAIN_SECONDS); return once what was read is stored (or, when the spool refuses
        it, once that is logged)."""
        self.stop_listening()
        connections = list(self._connections)
        deadline = asyncio.get_running_loop().time() + DRAIN_SECONDS
        await asyncio.gather(*(conn.drain(deadline) for conn in connections))
        for conn in connections:
            conn.shutdown()
        await asyncio.gather(*(conn.closed for conn in connections))
        await self.wait_closed()

    @property
    def connections(self) -> int:
        """Connections open now (being read or storing what was read)."""
        return len(self._connections)

    def oversized(self, peer: str) -> None:
        """A connection closed for a length prefix over the limit."""
        self.broken(
            peer,
            f"a frame's length prefix is over the limit of {self.max_frame} bytes, so nothing "
            "after it can be framed",
        )


def batch_length(items: list[Item]) -> int:
    """How many of `items` make the next batch: at most MAX_BATCH_FRAMES items and
    MAX_BATCH_BYTES bytes, but at least one item."""
    size = 0
    for count, item in enumerate(items[:MAX_BATCH_FRAMES]):
        size += len(item.body) if isinstance(item, Incoming) else len(item.raw)
        if size > MAX_BATCH_BYTES and count:
            return count
    return min(len(items), MAX_BATCH_FRAMES)


class _Connection(asyncio.Protocol):
    """One sender. Reading pauses whenever frames are waiting to be stored."""

    def __init__(self, ingest: TcpIngest) -> None:
        self._ingest = ingest
        self._framer = FrameReader(ingest.max_frame, octet_counting=ingest.octet_counting)
        self._pending: list[Item] = []
        self._worker: asyncio.Task[None] | None = None
        self._transport: asyncio.Transport | None = None
        self._ended = False
        self.peer = "?"
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio callbacks -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if not self._ingest.admit():
            # accepted just as the listener closed, or one too many: nothing is read from it
            self._ended = True
            self._finish()
            return
        self._ingest._connections.add(self)
        log.debug("%s: connection from %s", self._ingest.source, self.peer)

    def data_received(self, data: bytes) -> None:
        self._take(self._framer.feed(data))
        if self._framer.broken:
            # an octet count over the limit: the rest of the stream cannot be framed
            self._ingest.oversized(self.peer)
            self.shutdown()

    def eof_received(self) -> bool:
        self._end()
        # keep the transport; it is closed once what was read is stored. A TLS transport
        # cannot stay half-open (asyncio warns on True); what was read is stored all the same.
        return self._transport is None or self._transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()  # a reset: what was read is stored all the same

    # -- the work --------------------------------------------------------------------------------

    def shutdown(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()
        self._end()

    async def drain(self, deadline: float) -> None:
        """Read on until the kernel holds nothing unread for this connection and what was
        read is stored, or until `deadline` (loop time)."""
        loop = asyncio.get_running_loop()
        while not self._ended and loop.time() < deadline:
            if self._worker is None and self._unread() == 0:
                return
            # the loop reads and stores meanwhile; a short wait keeps this cheap
            await asyncio.sleep(0.005)

    def _unread(self) -> int:
        """Bytes in the kernel's receive queue for this socket (0 when it cannot tell)."""
        sock = self._transport.get_extra_info("socket") if self._transport else None
        if sock is None:
            return 0
        try:
            got = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
        except OSError:
            return 0
        return struct.unpack("i", got)[0]

    def _end(self) -> None:
        """No more bytes will be read: a last frame without delimiter is a frame too."""
        if self._ended:
            return
        self._ended = True
        self._take(self._framer.finish())
        if self._worker is None:
            self._finish()

    def _take(self, frames: list[Frame]) -> None:
        convert = self._ingest.convert
        items = [item for frame in frames if (item := convert(frame)) is not None]
        if not items:
            return
        self._pending.extend(items)
        if self._worker is None:
            if self._transport is not None:
                self._transport.pause_reading()
            self._worker = asyncio.create_task(self._store_pending())

    async def _store_pending(self) -> None:
        ingest = self._ingest
        try:
            while self._pending:
                batch = self._pending[: batch_length(self._pending)]
                stored = await ingest.store(batch, self.peer) == len(batch)
                del self._pending[: len(batch)]
                if not stored:
                    self._pending.clear()
        except Exception:
            # a bug, not the spool refusing: say what is lost and drop the connection
            log.exception(
                "%s: %d frame(s) read from %s were not stored",
                ingest.source,
                len(self._pending),
                self.peer,
            )
            self._pending.clear()
            self._ended = True
        finally:
            self._worker = None
        if self._ended:
            self._finish()
        elif self._transport is not None:
            self._transport.resume_reading()

    def _finish(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
        self._ingest._connections.discard(self)
        if not self.closed.done():
            self.closed.set_result(None)
            log.debug("%s: connection from %s closed", self._ingest.source, self.peer)
