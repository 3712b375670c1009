"""The HTTP listener, with a bound on open connections.

aiohttp has no connection limit of its own, and asyncio's server accepts whatever the kernel
queued; a few hundred clients that send headers and then nothing could each hold a buffer of
up to ingest.http.max_body_bytes. This site accepts a connection only while fewer than
`max_connections` are open: the rest wait in the kernel's accept queue (then get refused by
the kernel once its backlog is full) rather than being accepted and dropped, so a producer
arriving at a busy relay is served late instead of reset.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from aiohttp import web

log = logging.getLogger("relay.sources.http")


class LimitedTCPSite(web.BaseSite):
    """A TCPSite (same runner, same handlers) that keeps at most `max_connections` open."""

    __slots__ = ("_host", "_port", "_slots", "_sock", "_accepting")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        max_connections: int,
        backlog: int = 1024,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port = host, port
        self._slots = asyncio.Semaphore(max_connections)
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task | None = None

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        infos = await asyncio.get_running_loop().getaddrinfo(
            self._host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(self._backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._server = _Listening(self)  # what BaseSite.stop and runner.addresses use
        self._accepting = asyncio.create_task(self._accept_loop(), name="http accept")

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert self._sock is not None and server is not None
        while True:
            await self._slots.acquire()
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except asyncio.CancelledError:
                self._slots.release()
                raise
            except OSError as exc:  # EMFILE and the like: wait, do not spin
                self._slots.release()
                log.warning("cannot accept an HTTP connection: %s", exc.strerror or exc)
                await asyncio.sleep(0.1)
                continue
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await loop.connect_accepted_socket(lambda: _Counted(server(), self), conn)
            except OSError:
                conn.close()
                self._slots.release()

    def _closed(self) -> None:
        self._slots.release()

    def _stop_accepting(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            self._accepting = None
        if self._sock is not None:
            self._sock.close()


class _Listening:
    """The part of asyncio.Server that aiohttp's runner uses: the sockets and close()."""

    def __init__(self, site: LimitedTCPSite) -> None:
        self._site = site
        self.sockets = (site._sock,)

    def close(self) -> None:
        self._site._stop_accepting()

    async def wait_closed(self) -> None:
        return None


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, giving its slot back when the connection ends."""

    def __init__(self, inner: asyncio.Protocol, site: LimitedTCPSite) -> None:
        self._inner, self._site, self._done = inner, site, False
        # the hot calls go straight to aiohttp's handler, with no extra frame
        self.data_received = inner.data_received
        self.eof_received = inner.eof_received
        self.pause_writing = inner.pause_writing
        self.resume_writing = inner.resume_writing

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._inner.connection_lost(exc)
        finally:
            if not self._done:
                self._done = True
                self._site._closed()
