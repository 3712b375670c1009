"""The CONNECT tunnel (relay.delivery.rsocket.tunnel) against a scripted proxy on 127.0.0.1: a
good tunnel carries bytes (and TLS to the target inside it), every kind of refusal or broken
answer is a bounded, one-line error naming the proxy with its password masked, and the RSocket
sink reports a refusal as its not-ready reason until the proxy lets it through."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from rsocket.payload import Payload
from rsocket.request_handler import BaseRequestHandler
from rsocket.rsocket_server import RSocketServer
from rsocket.transports.tcp import TransportTCP

from relay.config import RetryConfig, UpstreamConfig
from relay.delivery.proxy import Proxy
from relay.delivery.rsocket.connection import RSocketConnection
from relay.delivery.rsocket.sink import RSocketSink
from relay.delivery.rsocket.tunnel import MAX_ANSWER_HEAD, TunnelError, TunnelRefused, open_tunnel
from relay.delivery.sink import DELIVERED
from tests.helpers import eventually
from tests.helpers.tls import make_tls_pki

PASSWORD = "hunter2-secret"
Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class ScriptedProxy:
    """Reads a CONNECT request, records it, then does what `answer` says (by default: splices
    the connection to the requested host:port, as a proxy does)."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.answer: Answer | None = None
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> ScriptedProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def proxy(self, user: str = "relay", password: str = PASSWORD) -> Proxy:
        return Proxy("127.0.0.1", self.port, "upstream.proxy", user, password)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head)
            await (self.answer or self.splice)(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def splice(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target = self.requests[-1].split(b" ")[1].decode()
        host, _, port = target.rpartition(":")
        up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._server.close()
        await self._server.wait_closed()


def answering(raw: bytes, then_wait: bool = True) -> Answer:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(raw)
        await writer.drain()
        if then_wait:
            await reader.read()  # until the client gives up

    return answer


@pytest.fixture
async def proxy():
    p = await ScriptedProxy().start()
    yield p
    await p.close()


@pytest.fixture
async def echo():
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def test_a_tunnel_carries_bytes_and_authenticates(proxy: ScriptedProxy, echo: int) -> None:
    reader, writer = await open_tunnel(proxy.proxy(), "127.0.0.1", echo, timeout=5)
    writer.write(b"hello through the tunnel")
    assert await reader.readexactly(24) == b"hello through the tunnel"
    writer.close()
    request = proxy.requests[0].decode()
    assert request.startswith(f"CONNECT 127.0.0.1:{echo} HTTP/1.1\r\n")
    assert f"\r\nHost: 127.0.0.1:{echo}\r\n" in request
    expected = base64.b64encode(f"relay:{PASSWORD}".encode()).decode()
    assert f"\r\nProxy-Authorization: Basic {expected}\r\n" in request


async def test_no_credentials_no_authorization_header(proxy: ScriptedProxy, echo: int) -> None:
    _, writer = await open_tunnel(proxy.proxy(user="", password=""), "127.0.0.1", echo)
    writer.close()
    assert b"Proxy-Authorization" not in proxy.requests[0]


async def test_bytes_the_proxy_sends_after_its_answer_reach_the_client(
    proxy: ScriptedProxy,
) -> None:
    proxy.answer = answering(b"HTTP/1.0 200 OK\r\nVia: x\r\n\r\nearly bytes")
    reader, writer = await open_tunnel(proxy.proxy(), "status.example", 7070, timeout=5)
    assert await reader.readexactly(11) == b"early bytes"
    writer.close()


@pytest.mark.parametrize(
    ("answer", "status", "words"),
    [
        (b"HTTP/1.1 403 Filtered\r\n\r\n", 403, "403 Filtered"),
        (
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n",
            407,
            "407 Proxy Authentication Required; check the proxy user and password",
        ),
        (b"HTTP/1.0 502 Bad Gateway\r\nContent-Length: 3\r\n\r\nbad", 502, "502 Bad Gateway"),
        (b"HTTP/1.1 503\r\n\r\n", 503, "refused CONNECT status.example:7070: 503;"),
    ],
)
async def test_a_refusal_names_the_proxy_masked_and_its_answer(
    proxy: ScriptedProxy, answer: bytes, status: int, words: str
) -> None:
    proxy.answer = answering(answer)
    with pytest.raises(TunnelRefused) as caught:
        await open_tunnel(proxy.proxy(), "status.example", 7070, timeout=5)
    message = str(caught.value)
    assert caught.value.status == status
    assert f"the proxy http://relay:***@127.0.0.1:{proxy.port} refused CONNECT" in message
    assert words in message
    assert PASSWORD not in message and "\n" not in message


async def test_407_without_a_user_says_to_give_one(proxy: ScriptedProxy) -> None:
    proxy.answer = answering(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
    with pytest.raises(TunnelRefused, match="it wants a user"):
        await open_tunnel(proxy.proxy(user="", password=""), "status.example", 7070)


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "did not answer CONNECT status.example:7070 in HTTP"),
        (b"\x00\x01\x02garbage\r\n\r\n", "did not answer CONNECT"),
        (b"HTTP/1.1 OK\r\n\r\n", "did not answer CONNECT"),
    ],
)
async def test_an_answer_that_is_not_http_is_one_line(
    proxy: ScriptedProxy, answer: bytes, words: str
) -> None:
    proxy.answer = answering(answer)
    with pytest.raises(TunnelError) as caught:
        await open_tunnel(proxy.proxy(), "status.example", 7070, timeout=5)
    assert words in str(caught.value) and "\n" not in str(caught.value)
    assert not isinstance(caught.value, TunnelRefused)


async def test_a_proxy_that_closes_before_answering(proxy: ScriptedProxy) -> None:
    proxy.answer = answering(b"HTTP/1.1 2", then_wait=False)
    with pytest.raises(TunnelError, match="closed the connection before answering CONNECT"):
        await open_tunnel(proxy.proxy(), "status.example", 7070, timeout=5)


async def test_a_silent_proxy_costs_the_timeout_and_no_more(proxy: ScriptedProxy) -> None:
    proxy.answer = answering(b"HTTP/1.1 200 ")  # half a status line, then nothing
    started = time.monotonic()
    with pytest.raises(TunnelError, match=r"no usable answer to CONNECT .* within 0.3 s"):
        await open_tunnel(proxy.proxy(), "status.example", 7070, timeout=0.3)
    assert time.monotonic() - started < 2.0


async def test_oversized_headers_are_cut_off(proxy: ScriptedProxy) -> None:
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        with contextlib.suppress(OSError):
            for _ in range(1000):  # 1000 × 1 KiB, never the blank line
                writer.write(b"X-Filler: " + b"a" * 1012 + b"\r\n")
                await writer.drain()

    proxy.answer = flood
    with pytest.raises(TunnelError, match=f"more than {MAX_ANSWER_HEAD // 1024} KiB of headers"):
        await open_tunnel(proxy.proxy(), "status.example", 7070, timeout=5)


async def test_an_unreachable_proxy_is_named(proxy: ScriptedProxy) -> None:
    dead = Proxy("127.0.0.1", 1, "upstream.proxy", "relay", PASSWORD)
    with pytest.raises(TunnelError) as caught:
        await open_tunnel(dead, "status.example", 7070, timeout=5)
    assert "cannot connect to the proxy http://relay:***@127.0.0.1:1" in str(caught.value)
    assert PASSWORD not in str(caught.value)


class _Acks(BaseRequestHandler):
    received: list[bytes] = []

    async def request_response(self, payload: Payload) -> asyncio.Future:
        _Acks.received.append(payload.data or b"")
        answer = asyncio.get_running_loop().create_future()
        answer.set_result(Payload())
        return answer


async def _rsocket_server(ssl_context: ssl.SSLContext | None = None) -> asyncio.Server:
    servers: list[RSocketServer] = []

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        servers.append(RSocketServer(TransportTCP(reader, writer), handler_factory=_Acks))

    return await asyncio.start_server(accept, "127.0.0.1", 0, ssl=ssl_context)


async def test_rsocket_with_tls_inside_the_tunnel(proxy: ScriptedProxy, tmp_path: Path) -> None:
    """TLS runs end to end through the tunnel: the proxy relays only ciphertext, and the relay
    verifies the status service's certificate (its name, "localhost", and our CA)."""
    pki = make_tls_pki(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(pki.server_cert, pki.server_key)
    server = await _rsocket_server(server_context)
    port = server.sockets[0].getsockname()[1]
    _Acks.received.clear()
    conn = await RSocketConnection.open(
        "localhost",
        port,
        tls=True,
        ssl_context=pki.client_context(),
        keepalive_interval=20,
        keepalive_max_lifetime=90,
        connect_timeout=5,
        proxy=proxy.proxy(),
    )
    try:
        await conn.request(b'{"status": "through"}', b"", timeout=5)
        await conn.close()
        assert _Acks.received == [b'{"status": "through"}']
        assert proxy.requests[0].startswith(f"CONNECT localhost:{port} ".encode())
        # a context that does not trust the CA fails the handshake inside the tunnel
        with pytest.raises(ssl.SSLCertVerificationError):
            await open_tunnel(
                proxy.proxy(), "localhost", port, ssl_context=ssl.create_default_context()
            )
    finally:
        await conn.close()
        server.close()


class _Tokens:
    """A token source that always has the same token (the sink's connect needs none)."""

    async def token(self) -> str:
        return "tok-1"

    def current(self) -> str | None:
        return "tok-1"

    def invalidate(self, token: str) -> None:
        pass


async def test_the_sink_says_why_the_proxy_refuses_until_it_lets_it_through(
    proxy: ScriptedProxy,
) -> None:
    server = await _rsocket_server()
    port = server.sockets[0].getsockname()[1]
    proxy.answer = answering(b"HTTP/1.1 403 Forbidden\r\n\r\n")
    upstream = UpstreamConfig(
        host="127.0.0.1", port=port, proxy=f"http://relay:{PASSWORD}@127.0.0.1:{proxy.port}"
    )
    sink = RSocketSink(upstream, RetryConfig(initial_backoff=0.05, max_backoff=0.2), _Tokens())
    await sink.start()
    try:
        await eventually(sink.not_ready, 5, "the sink to report the refusal")
        reason = sink.not_ready()
        assert reason.startswith(f"the proxy http://relay:***@127.0.0.1:{proxy.port} refused ")
        assert f"CONNECT 127.0.0.1:{port}: 403 Forbidden" in reason
        assert PASSWORD not in reason and "\n" not in reason
        # retried with backoff: several attempts while it refuses
        await eventually(lambda: len(proxy.requests) >= 3, 5, "the sink to retry")
        proxy.answer = None  # the proxy now lets it through
        await eventually(lambda: sink.connected, 5, "the sink to connect through the proxy")
        assert sink.not_ready() is None
        _Acks.received.clear()
        assert await sink.send([b'{"messageId": "m1"}']) == DELIVERED
        assert len(_Acks.received) == 1
    finally:
        await sink.close()
        server.close()
