"""Closing the RSocket connection and the sink must not swallow the closer's cancellation.

rsocket-py's clean-up (`cancel_if_task_exists`) cancels its tasks and then catches *every*
CancelledError while awaiting them, its caller's own included: a task cancelled while it waits in
there goes on as if nothing happened. The sink's supervisor, cancelled at shutdown while it closed
a lost connection, then dialled again and waited forever on the new one (the shutdown hung; seen
as an intermittent hang of the redial test)."""

from __future__ import annotations

import asyncio

from rsocket.request_handler import BaseRequestHandler
from rsocket.rsocket_server import RSocketServer
from rsocket.transports.tcp import TransportTCP

from relay.delivery.rsocket.connection import RSocketConnection


async def test_a_cancelled_close_stays_cancelled() -> None:
    sockets: list[RSocketServer] = []

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sockets.append(
            RSocketServer(TransportTCP(reader, writer), handler_factory=BaseRequestHandler)
        )

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        conn = await RSocketConnection.open(
            "127.0.0.1",
            server.sockets[0].getsockname()[1],
            tls=False,
            keepalive_interval=5,
            keepalive_max_lifetime=30,
            connect_timeout=5,
        )
        conn.lost("closed by the upstream")
        await asyncio.sleep(0)  # the library's clean-up starts: it waits for its own tasks
        closer = asyncio.create_task(conn.close())
        await asyncio.sleep(0)  # the closer waits for that clean-up
        closer.cancel()
        done, _ = await asyncio.wait({closer}, timeout=5)
        assert done, "the cancelled close did not end"
        assert closer.cancelled(), "the close's cancellation was swallowed"
        await conn.close()  # the clean-up itself still ends
    finally:
        for socket in sockets:
            await socket.close()
        server.close()
