"""One RELP connection: frames in, stored, then answered in command order.

A batch is the frames that one read completed (at most MAX_BATCH_FRAMES / MAX_BATCH_BYTES).
Reading pauses while a batch is stored; its answers are written once the spool has committed
it (fsynced), and only then is the connection read again. A ``close`` or a frame that cannot be
followed ends a batch and, after its answers, the connection.
"""

from __future__ import annotations

import asyncio
import logging

from relay import __version__
from relay.sources.relp_framing import RelpFrame, RelpParser, encode_frame
from relay.sources.relp_listener import RelpListener
from relay.sources.syslog_framing import Frame
from relay.sources.tcp import MAX_BATCH_BYTES, MAX_BATCH_FRAMES, Item

__all__ = ["OFFERS", "RelpSession"]

log = logging.getLogger("relay.sources.relp")

# What the relay accepts of an open: librelp speaks version 0, the only one in use.
OFFERS = b"200 OK\nrelp_version=0\nrelp_software=relay,%s\ncommands=syslog" % __version__.encode()
OK = b"200 OK"
SERVERCLOSE = encode_frame(0, "serverclose")
# Answers not yet taken by the sender beyond this many bytes: stop reading until it takes them
# (a peer that sends and never reads cannot grow our write buffer without bound).
WRITE_HIGH = 1 << 20


class RelpSession(asyncio.Protocol):
    """One sender. Reading pauses whenever a batch is stored or answers wait to be taken."""

    def __init__(self, listener: RelpListener) -> None:
        self._listener = listener
        self._parser = RelpParser(listener.max_data)
        self._pending: list[RelpFrame] = []
        self._worker: asyncio.Task[None] | None = None
        self._transport: asyncio.Transport | None = None
        self._opened = False
        self._ending = False  # no more frames are taken: close once the worker is done
        self._write_paused = False
        self._hint = False  # the relay ends the connection: say so with serverclose
        self.peer = "?"
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio callbacks -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if not self._listener.admit():
            self._ending = True
            self._finish()
            return
        self._listener.sessions.add(self)
        log.debug("relp: connection from %s", self.peer)

    def data_received(self, data: bytes) -> None:
        if self._ending:
            return
        frames = self._parser.feed(data)
        if not frames:
            return
        self._pending.extend(frames)
        if self._parser.broken:
            self._ending = True  # nothing after a broken frame can be read
        self._pause_reading()
        if self._worker is None:
            self._worker = asyncio.create_task(self._work())

    def eof_received(self) -> bool:
        self._end()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        # the sender is gone: whatever is being stored is stored, but nobody hears the answers
        self._transport = None
        self._end()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._resume_reading()

    # -- control from the listener ---------------------------------------------------------------

    def stop(self) -> None:
        """Shutdown: finish the batch being stored, answer it, send serverclose, close."""
        self._pending.clear()
        self._end()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._finish()

    # -- the work --------------------------------------------------------------------------------

    def _end(self) -> None:
        self._ending = True
        if self._worker is None:
            self._finish()

    def _pause_reading(self) -> None:
        if self._transport is not None and self._transport.is_reading():
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        busy = self._worker is not None or self._write_paused or self._ending
        if self._transport is not None and not busy and not self._transport.is_reading():
            self._transport.resume_reading()

    async def _work(self) -> None:
        try:
            while self._pending and self._transport is not None:
                batch = self._next_batch()
                if not await self._answer(batch):
                    self._ending = True
                    break
                if self._listener.closing.is_set():
                    self._ending = True
                    break
        except Exception:
            # a bug, not the spool refusing: nothing unanswered is lost (the sender resends)
            log.exception("relp: the connection from %s failed; closing it", self.peer)
            self._ending = True
        finally:
            self._worker = None
        if self._ending:
            self._pending.clear()
            self._finish()
        else:
            self._resume_reading()

    def _next_batch(self) -> list[RelpFrame]:
        """The next frames to store together: a close or a broken frame ends a batch."""
        size = 0
        count = 0
        for frame in self._pending[:MAX_BATCH_FRAMES]:
            count += 1
            size += len(frame.data)
            if frame.problem is not None or frame.command == "close" or size > MAX_BATCH_BYTES:
                break
        batch = self._pending[:count]
        del self._pending[:count]
        return batch

    async def _answer(self, batch: list[RelpFrame]) -> bool:
        """Store what `batch` carries, then write its answers in order. False when the
        connection is to be closed after them."""
        items: list[Item] = []
        answers: list[bytes] = []
        item_of: list[int] = []  # the index in answers of each item's answer
        go_on = True
        for frame in batch:
            answer, item, end = self._handle(frame)
            if item is not None:
                item_of.append(len(answers))
                items.append(item)
            answers.append(answer)
            if end:
                go_on = False
                break
        listener = self._listener
        stored = (
            await listener.store(items, self.peer, hold_limit=listener.refused_close_after)
            if items
            else 0
        )
        if stored < len(items):
            # answer what is stored; the sender resends the rest after it reconnects
            answers = answers[: item_of[stored]]
            self._hint = True
            go_on = False
        self._write(b"".join(answers))
        return go_on

    def _handle(self, frame: RelpFrame) -> tuple[bytes, Item | None, bool]:
        """The answer to `frame`, what it makes to store (an event or a dead letter), and
        whether the connection ends after it."""
        if frame.problem is not None:
            self._listener.broken(self.peer, frame.problem)
            reject = self._listener.intake.reject(
                frame.data, frame.problem, self._listener.source, frame.reason
            )
            if frame.txnr and frame.command == "syslog":
                # kept as a dead letter: a 500 makes the sender drop it rather than resend it
                # for ever into the same refusal
                self._hint = True
                return rsp(frame.txnr, b"500 frame over the size limit"), reject, True
            self._hint = True
            return b"", reject, True
        command = frame.command
        if frame.txnr == 0:
            return b"", None, False  # a hint from the client: none is answered
        if command == "syslog":
            if not self._opened:
                self._hint = True
                return rsp(frame.txnr, b"500 session not open"), None, True
            if not frame.data.strip():
                return rsp(frame.txnr, OK), None, False  # an empty message carries nothing
            item = self._listener.convert(Frame(frame.data, len(frame.data)))
            return rsp(frame.txnr, OK), item, False
        if command == "open":
            if self._opened:
                return rsp(frame.txnr, b"500 protocol error: connection already open"), None, False
            if b"relp_version" not in frame.data:
                return rsp(frame.txnr, b"500 required offer relp_version missing"), None, False
            self._opened = True
            return rsp(frame.txnr, OFFERS), None, False
        if command == "close":
            return encode_frame(frame.txnr, "rsp"), None, True
        return rsp(frame.txnr, b"500 command not supported"), None, False

    def _write(self, data: bytes) -> None:
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _finish(self) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            if self._hint or self._listener.closing.is_set():
                transport.write(SERVERCLOSE)
            transport.close()  # after what was written is sent
        self._listener.sessions.discard(self)
        if not self.closed.done():
            self.closed.set_result(None)
            log.debug("relp: connection from %s closed", self.peer)


def rsp(txnr: int, data: bytes) -> bytes:
    return encode_frame(txnr, "rsp", data)
