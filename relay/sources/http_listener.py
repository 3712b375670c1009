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
import ssl

from aiohttp import web

from relay import supervision
from relay.sources.tls import HANDSHAKE_TIMEOUT
from relay.sources.tls_handshakes import handshake_failed

log = logging.getLogger("relay.sources.http")


class LimitedTCPSite(web.BaseSite):
    """A TCPSite (same runner, same handlers) that keeps at most `max_connections` open."""

    __slots__ = ("_host", "_port", "_slots", "_socks", "_accepting", "_handshakes")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        max_connections: int,
        backlog: int = 1024,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(runner, backlog=backlog, ssl_context=ssl_context)
        self._host, self._port = host, port
        self._slots = asyncio.Semaphore(max_connections)
        self._socks: list[socket.socket] = []
        self._accepting: list[asyncio.Task] = []
        self._handshakes: set[asyncio.Task] = set()

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        """The port listened on: the one asked for, or the one the OS gave for port 0."""
        return self._socks[0].getsockname()[1] if self._socks else self._port

    async def start(self) -> None:
        await super().start()
        infos = await asyncio.get_running_loop().getaddrinfo(
            self._host or None, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        # every address the host names, as asyncio's create_server binds them
        seen: set = set()
        try:
            for family, _, proto, _, address in infos:
                if (family, address) in seen:
                    continue
                seen.add((family, address))
                self._socks.append(_listen(family, proto, address, self._backlog))
        except OSError:
            for sock in self._socks:
                sock.close()
            self._socks.clear()
            raise
        self._server = _Listening(self)  # what BaseSite.stop and runner.addresses use
        # supervised: a listener that stopped accepting would look alive and take nothing
        self._accepting = [
            supervision.watch(asyncio.create_task(self._accept_loop(sock)), "http accept")
            for sock in self._socks
        ]

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            try:
                conn, _ = await loop.sock_accept(sock)
            except asyncio.CancelledError:
                self._slots.release()
                raise
            except OSError as exc:  # EMFILE and the like: wait, do not spin
                self._slots.release()
                log.warning("cannot accept an HTTP connection: %s", exc.strerror or exc)
                await asyncio.sleep(0.1)
                continue
            if self._ssl_context is None:
                await self._connect(conn)
            else:
                # a TLS handshake takes round trips (and a silent client up to HANDSHAKE_TIMEOUT):
                # it must not hold up the next accept
                task = asyncio.create_task(self._connect(conn))
                self._handshakes.add(task)
                task.add_done_callback(self._handshakes.discard)

    async def _connect(self, conn: socket.socket) -> None:
        server = self._runner.server
        assert server is not None
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: _Counted(server(), self),
                conn,
                ssl=self._ssl_context,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT if self._ssl_context else None,
            )
        except (OSError, TimeoutError) as exc:
            # a failed handshake (no or a wrong client certificate, plain text on a TLS port, a
            # silent client past HANDSHAKE_TIMEOUT): the client's problem, told to it by the TLS
            # alert; counted, and a debug line here
            if self._ssl_context is not None:
                handshake_failed(self._ssl_context, _peer(conn), exc)
            else:
                log.debug("HTTP connection dropped before it was served: %s", exc)
            conn.close()
            self._slots.release()
        except asyncio.CancelledError:  # the listener closes mid-handshake
            conn.close()
            self._slots.release()
            raise

    def _closed(self) -> None:
        self._slots.release()

    def _stop_accepting(self) -> None:
        # each socket is closed once its accept loop has ended, never under a pending accept
        for task, sock in zip(self._accepting, self._socks, strict=True):
            task.add_done_callback(lambda _, sock=sock: sock.close())
            task.cancel()
        self._accepting = []
        for task in self._handshakes:
            task.cancel()


def _peer(conn: socket.socket) -> object:
    try:
        return conn.getpeername()
    except OSError:  # already reset
        return "?"


def _listen(family: int, proto: int, address: tuple, backlog: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # as asyncio does: an IPv6 socket does not also take the IPv4 address
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _Listening:
    """The part of asyncio.Server that aiohttp's runner uses: the sockets and close()."""

    def __init__(self, site: LimitedTCPSite) -> None:
        self._site = site
        self.sockets = tuple(site._socks)

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
