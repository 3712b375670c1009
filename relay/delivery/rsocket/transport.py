"""rsocket-py's TCP transport, writing the frames queued at one moment with one write call.

The library writes a frame in two or three pieces, each a system call; here frames go into one
buffer that is written when rsocket-py's send queue runs empty (or the buffer grows large), so a
burst of requests costs one write. A frame is never split across writes either: rsocket-js's
server is known to mishandle a SETUP frame split across TCP reads. The relay's connection and the
status stand-in's server both use it.
"""

from __future__ import annotations

import asyncio
import contextlib

from rsocket.frame import Frame, serialize_prefix_with_frame_size_header
from rsocket.helpers import wrap_transport_exception
from rsocket.transports.tcp import TransportTCP

READ_BUFFER = 64 * 1024
_WRITE_AT = 64 * 1024  # write before the queue is empty once this much is waiting
_DRAIN_ABOVE = 1 << 20  # wait for the kernel only when this much is unsent: in-flight bounds it


class SingleWriteTCP(TransportTCP):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer, read_buffer_size=READ_BUFFER)
        self._out = bytearray()

    async def serialize_partial(self, frame: Frame) -> None:
        out = self._out
        out += serialize_prefix_with_frame_size_header(frame)
        frame.write_data_metadata(out.extend)
        # a frame someone waits to see sent (the last one before a close, say) cannot wait for
        # the queue to run empty
        if len(out) >= _WRITE_AT or frame.sent_future is not None:
            await self._write()

    async def on_send_queue_empty(self) -> None:
        # rsocket-py's sender calls this after the last frame it had: nothing may stay behind
        if self._out:
            await self._write()
        await super().on_send_queue_empty()  # a drain, which also reports a broken connection

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._out:
                await self._write()
        await super().close()

    async def _write(self) -> None:
        # a fresh buffer each time: the transport may keep the one it is given
        out, self._out = self._out, bytearray()
        with wrap_transport_exception():
            self._writer.write(out)
            if self._writer.transport.get_write_buffer_size() > _DRAIN_ABOVE:
                await self._writer.drain()
