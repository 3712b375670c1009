"""rsocket-py's TCP transport, writing each frame with one write call.

The library writes a frame in two or three pieces; one write is faster, and rsocket-js's server
is known to mishandle a SETUP frame split across TCP reads.
"""

from __future__ import annotations

from rsocket.frame import Frame, serialize_prefix_with_frame_size_header
from rsocket.helpers import wrap_transport_exception
from rsocket.transports.tcp import TransportTCP

READ_BUFFER = 64 * 1024


class SingleWriteTCP(TransportTCP):
    def __init__(self, reader, writer) -> None:
        super().__init__(reader, writer, read_buffer_size=READ_BUFFER)

    async def serialize_partial(self, frame: Frame) -> None:
        buffer = bytearray(serialize_prefix_with_frame_size_header(frame))
        frame.write_data_metadata(buffer.extend)
        with wrap_transport_exception():
            self._writer.write(buffer)
            # drain only when the socket buffer is filling up: the in-flight bound limits it
            if self._writer.transport.get_write_buffer_size() > 1 << 20:
                await self._writer.drain()
