"""A one-off RSocket conversation with the status service, step by step, for `relay doctor`.

The sink's connection (connection.py) hides the protocol's steps behind rsocket-py; a diagnosis
needs to see each of them: the TCP (and TLS, and proxy tunnel) dial, SETUP accepted — RSocket
has no positive answer to SETUP, so the probe sends a KEEPALIVE with the respond flag right
behind it and waits for the echo (a server that refuses SETUP answers ERROR and closes
instead) — and, optionally, one REQUEST_RESPONSE. Frames are built and parsed with rsocket-py's
frame classes, written with RSocket's TCP framing (24-bit length), one frame per write.

The dial is the sink's: the same proxy choice (`relay.delivery.proxy.rsocket_proxy`, done by the
caller), the same CONNECT tunnel (`relay.delivery.rsocket.tunnel.dial`) with TLS inside
it, the same SETUP MIME types. Everything is bounded: each step by `timeout`, each frame read by
`MAX_FRAME` bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from rsocket.error_codes import ErrorCode
from rsocket.exceptions import RSocketProtocolError
from rsocket.extensions.mimetypes import WellKnownMimeTypes
from rsocket.frame import (
    ErrorFrame,
    Frame,
    KeepAliveFrame,
    PayloadFrame,
    RequestResponseFrame,
    SetupFrame,
    parse_or_ignore,
    serialize_with_frame_size_header,
)

from relay.delivery.proxy import Proxy
from relay.delivery.rsocket.tunnel import dial
from relay.errors import one_line

__all__ = ["MAX_FRAME", "ProbeClosed", "ProbeError", "RSocketProbe", "Refused"]

# The probe expects small frames only (an ERROR text, an empty PAYLOAD, a KEEPALIVE)
MAX_FRAME = 1 << 20
_PROBE_STREAM = 1
_KEEPALIVE_DATA = b"relay doctor"
_MAX_TEXT = 300


class ProbeError(Exception):
    """A step of the probe failed; ``str()`` is one line without secrets."""


class ProbeClosed(ProbeError):
    """The peer closed the connection (or sent something that is no RSocket)."""


@dataclass
class Refused(ProbeError):
    """An ERROR frame: on stream 0 (SETUP refused, connection error) or on the request's."""

    code: str  # the error code's name, e.g. APPLICATION_ERROR, REJECTED_SETUP
    text: str
    stream: int

    def __str__(self) -> str:
        return f"{self.code}: {self.text}" if self.text else self.code


class RSocketProbe:
    """One connection; `open`, then `setup`, then optionally `request`, then `close`."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._timeout = timeout

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        tls: bool,
        proxy: Proxy | None,
        timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> RSocketProbe:
        """Dial as the sink does. Raises OSError (TunnelError / TunnelRefused from a proxy),
        ssl.SSLError or TimeoutError."""
        reader, writer = await dial(
            host, port, tls=tls, proxy=proxy, timeout=timeout, ssl_context=ssl_context
        )
        return cls(reader, writer, timeout)

    async def setup(self, keepalive_interval: float, keepalive_max_lifetime: float) -> float:
        """SETUP as the sink sends it, then a KEEPALIVE asking for an answer; returns the
        round trip in seconds once the echo came. Raises Refused, ProbeClosed or ProbeError."""
        setup = SetupFrame()
        setup.keep_alive_milliseconds = max(1, round(keepalive_interval)) * 1000
        setup.max_lifetime_milliseconds = max(1, round(keepalive_max_lifetime)) * 1000
        setup.metadata_encoding = WellKnownMimeTypes.MESSAGE_RSOCKET_COMPOSITE_METADATA.value.name
        setup.data_encoding = WellKnownMimeTypes.APPLICATION_JSON.value.name
        keepalive = KeepAliveFrame(data=_KEEPALIVE_DATA)
        keepalive.flags_respond = True
        started = time.monotonic()
        await self._send(setup)
        await self._send(keepalive)
        # one deadline for the whole step: a peer that keeps sending other frames (its own
        # keepalives, say) but never echoes ours must not keep the doctor waiting
        async with self._step("the keepalive's echo"):
            while True:
                frame = await self._next("the keepalive's echo")
                if isinstance(frame, KeepAliveFrame) and not frame.flags_respond:
                    return time.monotonic() - started

    async def request(self, data: bytes, metadata: bytes) -> None:
        """One REQUEST_RESPONSE; returns on an acknowledgement (COMPLETE alone, the real
        service's answer, or with data). Raises Refused with the peer's text."""
        frame = RequestResponseFrame()
        frame.stream_id = _PROBE_STREAM
        frame.data = data
        frame.metadata = metadata
        await self._send(frame)
        async with self._step("an answer to the request"):
            while True:
                answer = await self._next("an answer to the request")
                if isinstance(answer, PayloadFrame) and answer.stream_id == _PROBE_STREAM:
                    return

    @contextlib.asynccontextmanager
    async def _step(self, waiting_for: str) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._timeout):
                yield
        except TimeoutError:
            raise ProbeError(f"no {waiting_for} within {self._timeout:g} s") from None

    async def close(self) -> None:
        self._writer.transport.abort()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    async def _send(self, frame: Frame) -> None:
        self._writer.write(serialize_with_frame_size_header(frame))
        try:
            async with asyncio.timeout(self._timeout):
                await self._writer.drain()
        except (OSError, TimeoutError) as exc:
            raise ProbeClosed(f"cannot send: {exc or type(exc).__name__}") from None

    async def _next(self, waiting_for: str) -> Frame:
        """The next frame that is not for us to answer: KEEPALIVEs asking for an answer are
        answered here; an ERROR becomes Refused."""
        while True:
            frame = await self._read(waiting_for)
            if isinstance(frame, KeepAliveFrame) and frame.flags_respond:
                echo = KeepAliveFrame(data=frame.data)
                await self._send(echo)
                continue
            if isinstance(frame, ErrorFrame):
                raise Refused(
                    _code_name(frame.error_code),
                    one_line((frame.data or b"").decode("utf-8", "replace"), _MAX_TEXT),
                    frame.stream_id,
                )
            return frame

    async def _read(self, waiting_for: str) -> Frame:
        while (frame := await self._read_one(waiting_for)) is None:
            pass  # a frame type the probe ignores
        return frame

    async def _read_one(self, waiting_for: str) -> Frame | None:
        try:
            async with asyncio.timeout(self._timeout):
                head = await self._reader.readexactly(3)
                length = int.from_bytes(head, "big")
                if length > MAX_FRAME:
                    raise ProbeClosed(
                        f"the peer sent a frame of {length} bytes: not the RSocket status service"
                    )
                body = await self._reader.readexactly(length)
        except TimeoutError:
            raise ProbeError(f"no {waiting_for} within {self._timeout:g} s") from None
        except asyncio.IncompleteReadError:
            raise ProbeClosed(f"the peer closed the connection before {waiting_for}") from None
        except OSError as exc:
            raise ProbeClosed(f"connection lost before {waiting_for}: {exc}") from None
        try:
            frame = parse_or_ignore(body)
        except (RSocketProtocolError, ValueError, KeyError, IndexError) as exc:
            raise ProbeClosed(
                f"the peer answered something that is not RSocket ({one_line(str(exc), 80)})"
            ) from None
        return frame


def _code_name(code: object) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"error 0x{int(code):x}" if isinstance(code, int) else str(code)
