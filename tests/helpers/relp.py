"""A small RELP client for tests: speaks the protocol as librelp's client does, and lets a test
look at every answer (or the lack of one)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from relay.sources.relp_framing import RelpFrame, RelpParser, encode_frame

OPEN_OFFERS = b"relp_version=0\nrelp_software=test-client,1,none\ncommands=syslog"


class RelpClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.txnr = 0
        self._parser = RelpParser(1 << 20)
        self._frames: list[RelpFrame] = []

    @classmethod
    async def connect(
        cls, port: int, *, tls: ssl.SSLContext | None = None, open_session: bool = True
    ) -> RelpClient:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls, server_hostname="localhost" if tls else None
        )
        client = cls(reader, writer)
        if open_session:
            txnr = client.send("open", OPEN_OFFERS)
            answer = await client.answer(txnr)
            assert answer.data.startswith(b"200 OK\n"), answer
        return client

    def send(self, command: str, data: bytes = b"") -> int:
        """Send one command; its transaction number."""
        self.txnr += 1
        self.writer.write(encode_frame(self.txnr, command, data))
        return self.txnr

    def syslog(self, *messages: bytes) -> list[int]:
        return [self.send("syslog", m) for m in messages]

    async def next_frame(self, timeout: float = 5.0) -> RelpFrame | None:
        """The next frame from the relay, or None when it closed the connection."""
        async with asyncio.timeout(timeout):
            while not self._frames:
                try:
                    data = await self.reader.read(65536)
                except (ConnectionResetError, ssl.SSLError):
                    data = b""
                if not data:
                    return None
                self._frames += self._parser.feed(data)
        return self._frames.pop(0)

    async def answer(self, txnr: int, timeout: float = 5.0) -> RelpFrame:
        frame = await self.next_frame(timeout)
        assert frame is not None, f"connection closed before the answer to {txnr}"
        assert (frame.txnr, frame.command) == (txnr, "rsp"), frame
        return frame

    async def answers(self, count: int, timeout: float = 10.0) -> list[RelpFrame]:
        got = []
        for _ in range(count):
            frame = await self.next_frame(timeout)
            assert frame is not None, f"closed after {len(got)} of {count} answers"
            got.append(frame)
        return got

    async def rest(self, timeout: float = 5.0) -> list[RelpFrame]:
        """Every frame until the relay closes the connection."""
        got = []
        while (frame := await self.next_frame(timeout)) is not None:
            got.append(frame)
        return got

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()
