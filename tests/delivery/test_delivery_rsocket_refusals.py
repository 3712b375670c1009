"""The RSocket sink and the delivery loop against a scripted RSocket peer that answers as the real
service does (APPLICATION_ERROR with Spring Security's texts), with the real token provider
fetching from a token endpoint in the test and the real spool."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from rsocket.error_codes import ErrorCode
from rsocket.exceptions import RSocketApplicationError, RSocketProtocolError
from rsocket.payload import Payload
from rsocket.request_handler import BaseRequestHandler
from rsocket.rsocket_server import RSocketServer
from rsocket.transports.tcp import TransportTCP

from relay import supervision
from relay.auth.credentials import Credentials
from relay.auth.tokens import TokenProvider
from relay.config import MaskinportenConfig, RetryConfig, UpstreamConfig
from relay.delivery.loop import Delivery
from relay.delivery.rsocket.sink import RSocketSink
from relay.spool import Incoming
from relay.spool.sqlite import SqliteSpool
from tests.helpers import eventually

_TOKEN = re.compile(rb"tok-[0-9]+")

# what the peer answers: None for COMPLETE, or the exception to fail the request with
Decide = Callable[[str | None, bytes, bytes], Exception | None]


class ScriptedPeer:
    """An RSocket server on 127.0.0.1 whose answer to each request a test scripts."""

    def __init__(self, decide: Decide) -> None:
        self.decide = decide
        self.requests: list[tuple[float, str | None, bytes, Exception | None]] = []
        self.connections = 0
        self.close_after_answer = False
        self._sockets: list[RSocketServer] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        peer = self

        class Handler(BaseRequestHandler):
            async def request_response(self, payload: Payload) -> asyncio.Future:
                metadata = payload.metadata or b""
                found = _TOKEN.search(metadata)
                token = found.group().decode() if found else None
                error = peer.decide(token, metadata, payload.data or b"")
                peer.requests.append((time.monotonic(), token, payload.data or b"", error))
                answer = asyncio.get_running_loop().create_future()
                if error is None:
                    answer.set_result(Payload())
                else:
                    answer.set_exception(error)
                if peer.close_after_answer:
                    asyncio.get_running_loop().call_later(0.01, writer.close)
                return answer

        self._sockets.append(RSocketServer(TransportTCP(reader, writer), handler_factory=Handler))

    def refused(self) -> int:
        return sum(1 for r in self.requests if r[3] is not None)

    def between(self, start: float, end: float) -> int:
        return sum(1 for r in self.requests if start <= r[0] < end)

    async def close(self) -> None:
        for socket in self._sockets:
            try:
                async with asyncio.timeout(2):
                    await socket.close()
            except Exception:  # noqa: BLE001 - a test peer going away
                pass
        if self._server is not None:
            self._server.close()


class TokenEndpoint:
    """Maskinporten as far as the token provider needs it: tok-1, tok-2, … living 120 s."""

    def __init__(self) -> None:
        self.fetches = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/token", self._token)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/token"

    async def _token(self, request: web.Request) -> web.Response:
        await request.read()
        self.fetches += 1
        body = {"access_token": f"tok-{self.fetches}", "expires_in": 120, "token_type": "Bearer"}
        return web.json_response(body)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture(scope="module")
def creds() -> Credentials:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Credentials(private_key=key, x5c=None, kid="k1", subject="key id k1", not_after=None)


@pytest.fixture(autouse=True)
def fresh_supervisor():
    supervision.uninstall()
    yield
    supervision.uninstall()


class Relay:
    """Spool, token provider, RSocket sink and delivery loop, as `relay run` builds them."""

    def __init__(
        self,
        tmp_path: Path,
        peer: ScriptedPeer,
        endpoint: TokenEndpoint,
        creds,
        retry: RetryConfig | None = None,
        **up,
    ):
        self.tmp_path, self.peer, self.endpoint, self.creds = tmp_path, peer, endpoint, creds
        self.upstream = UpstreamConfig(
            host="127.0.0.1",
            port=peer.port,
            max_in_flight=32,
            request_timeout=2.0,
            keepalive_interval=5.0,
            keepalive_max_lifetime=30.0,
            **up,
        )
        self.retry = retry or RetryConfig(initial_backoff=0.05, max_backoff=0.4, max_rejections=3)

    async def __aenter__(self) -> Relay:
        self.spool = await SqliteSpool.open(
            self.tmp_path / "spool", max_bytes=100_000_000, dedup_window=0
        )
        mp = MaskinportenConfig(token_url=self.endpoint.url, client_id="test-client")
        self.tokens = TokenProvider(
            mp,
            self.creds,
            initial_backoff=self.retry.initial_backoff,
            max_backoff=self.retry.max_backoff,
        )
        self.sink = RSocketSink(self.upstream, self.retry, self.tokens)
        self.delivery = Delivery(self.spool, self.sink, self.upstream, self.retry)
        await self.tokens.start()
        await self.sink.start()
        await self.delivery.start()
        return self

    async def add(self, n: int, **fields) -> None:
        events = [
            Incoming(orjson.dumps({"n": i, "logger_name": "STATUS", **fields}), "test")
            for i in range(n)
        ]
        await self.spool.append(events)

    async def add_raw(self, bodies: list[bytes]) -> None:
        events = [Incoming(b, "test") for b in bodies]
        await self.spool.append(events)

    async def __aexit__(self, *exc) -> None:
        await self.delivery.stop(2)
        await self.sink.close()
        await self.tokens.close()
        await self.spool.close()


@pytest.fixture
async def endpoint():
    e = TokenEndpoint()
    await e.start()
    yield e
    await e.close()


async def started(peer: ScriptedPeer) -> ScriptedPeer:
    await peer.start()
    return peer


def assert_one_status_object_each(peer: ScriptedPeer) -> None:
    for _, _, data, _ in peer.requests:
        event = orjson.loads(data)
        assert isinstance(event, dict), data
        assert event["logger_name"] == "STATUS", data


TOKEN_TEXTS = [
    "Failed to validate the token",
    "Access Denied",
    "Jwt expired at 2026-12-01T10:00:00Z",
    "An error occurred while attempting to decode the Jwt: Malformed token",
]


@pytest.mark.parametrize("text", TOKEN_TEXTS)
async def test_a_service_refusing_the_first_token_gets_no_flood(
    tmp_path: Path, endpoint: TokenEndpoint, creds, text: str
) -> None:
    """The scenario of issue 10: the service refuses only the first token it saw."""
    first: list[str] = []

    def decide(token, metadata, data):
        if token is not None and not first:
            first.append(token)
        return RSocketApplicationError(text) if token == first[0] else None

    peer = await started(ScriptedPeer(decide))
    try:
        async with Relay(tmp_path, peer, endpoint, creds) as relay:
            await relay.add(2000)
            await eventually(
                lambda: relay.delivery.stats.delivered == 2000, 10, "every event delivered"
            )
            # the requests in flight on the first token, no more; ONE new token for all of them
            assert peer.refused() <= relay.upstream.max_in_flight
            assert endpoint.fetches == 2
            assert relay.spool.stats().dead_letters == 0
            assert relay.sink.not_ready() is None
            assert_one_status_object_each(peer)
    finally:
        await peer.close()


async def test_fresh_tokens_refused_too_back_off_and_say_why(
    tmp_path: Path, endpoint: TokenEndpoint, creds
) -> None:
    """Tokens from a Maskinporten environment the service does not trust: never costs events,
    never hammers the service or Maskinporten, and /readyz says so with the service's text."""
    trusted = {"on": False}

    def decide(token, metadata, data):
        return None if trusted["on"] else RSocketApplicationError("Failed to validate the token")

    peer = await started(ScriptedPeer(decide))
    try:
        async with Relay(tmp_path, peer, endpoint, creds) as relay:
            await relay.add(300)
            await eventually(lambda: relay.sink.not_ready() is not None, 5, "not ready")
            assert "Failed to validate the token" in relay.sink.not_ready()
            start, fetched = time.monotonic(), endpoint.fetches
            await eventually(lambda: time.monotonic() - start > 2.0, 3, "a 2 s window")
            made = peer.between(start, start + 2.0)
            # the backoff's pace (0.05 s doubling to 0.4 s) plus one burst in flight
            assert made <= relay.upstream.max_in_flight + 20, f"{made} requests in 2 s"
            assert endpoint.fetches - fetched <= 20
            assert relay.spool.stats().dead_letters == 0

            trusted["on"] = True
            await eventually(lambda: relay.delivery.stats.delivered == 300, 10, "all delivered")
            assert relay.sink.not_ready() is None
            assert relay.spool.stats().dead_letters == 0
    finally:
        await peer.close()


async def test_rejected_means_later_and_keeps_the_token(
    tmp_path: Path, endpoint: TokenEndpoint, creds
) -> None:
    answered = {"n": 0}

    def decide(token, metadata, data):
        answered["n"] += 1
        if answered["n"] <= 40:
            return RSocketProtocolError(ErrorCode.REJECTED, "overloaded")
        return None

    peer = await started(ScriptedPeer(decide))
    try:
        async with Relay(tmp_path, peer, endpoint, creds) as relay:
            await relay.add(200)
            await eventually(lambda: relay.delivery.stats.delivered == 200, 15, "all delivered")
            assert endpoint.fetches == 1  # the token was never blamed
            assert relay.spool.stats().dead_letters == 0
    finally:
        await peer.close()


async def test_a_wrong_route_keeps_the_events_and_says_so(
    tmp_path: Path, endpoint: TokenEndpoint, creds
) -> None:
    def decide(token, metadata, data):
        if b"log-fire" not in metadata:
            return RSocketApplicationError("No handler for destination 'log-fyre'")
        return None

    peer = await started(ScriptedPeer(decide))
    try:
        async with Relay(tmp_path, peer, endpoint, creds, route="log-fyre") as relay:
            await relay.add(100)
            await eventually(lambda: relay.sink.not_ready() is not None, 5, "not ready")
            assert "upstream.route" in relay.sink.not_ready()
            assert "log-fyre" in relay.sink.not_ready()
            start = time.monotonic()
            await eventually(lambda: time.monotonic() - start > 2.0, 3, "a 2 s window")
            assert peer.between(start, start + 2.0) <= 20
            assert relay.spool.stats().events == 100
            assert relay.spool.stats().dead_letters == 0
            assert endpoint.fetches == 1
    finally:
        await peer.close()


async def test_reconnects_back_off_when_connections_die_after_one_answer(
    tmp_path: Path, endpoint: TokenEndpoint, creds
) -> None:
    """One good answer does not make a connection healthy: an upstream that drops every
    connection after an answer is redialled at the backoff's pace, not at once."""
    peer = await started(ScriptedPeer(lambda token, metadata, data: None))
    peer.close_after_answer = True
    try:
        retry = RetryConfig(initial_backoff=1.0, max_backoff=1.0)
        async with Relay(tmp_path, peer, endpoint, creds, retry) as relay:
            await relay.add(1000)
            await eventually(lambda: peer.connections >= 3, 5, "a few connections")
            start, connections = time.monotonic(), peer.connections
            await eventually(lambda: time.monotonic() - start > 3.0, 4, "a 3 s window")
            made = peer.connections - connections
            # a full-jitter backoff of up to 1 s: about 5 in 3 s (without: one per ~0.2 s)
            assert made <= 9, f"{made} connections in 3 s"
            assert relay.spool.stats().dead_letters == 0
    finally:
        await peer.close()


async def test_a_connection_that_was_healthy_is_redialled_at_once(
    tmp_path: Path, endpoint: TokenEndpoint, creds
) -> None:
    """The reconnect backoff starts over after a connection that stayed up `healthy_after`:
    the same peer as above, with every connection counting as healthy, is redialled at once."""
    peer = await started(ScriptedPeer(lambda token, metadata, data: None))
    peer.close_after_answer = True
    try:
        retry = RetryConfig(initial_backoff=1.0, max_backoff=1.0)
        async with Relay(tmp_path, peer, endpoint, creds, retry) as relay:
            relay.sink.healthy_after = 0.0
            await relay.add(1000)
            # with the 1 s backoff kept, 10 s would give about 11 connections; the reset gives
            # 20 in well under a second, with room for a loaded machine
            await eventually(lambda: peer.connections >= 20, 10, "20 connections in 10 s")
    finally:
        await peer.close()


@pytest.mark.parametrize("part", ["sink", "tokens"])
async def test_the_connection_supervisor_and_token_refresher_are_supervised(
    endpoint: TokenEndpoint, creds, part: str
) -> None:
    """A bug that ends the task is reported (and so turns /healthz 503 and stops the relay)."""

    async def broken() -> None:
        raise RuntimeError("a bug")

    retry = RetryConfig()
    tokens = TokenProvider(MaskinportenConfig(token_url=endpoint.url, client_id="c"), creds)
    sink = RSocketSink(UpstreamConfig(host="127.0.0.1", port=1), retry, tokens)
    if part == "sink":
        sink._supervise = broken  # type: ignore[method-assign]
        await sink.start()
    else:
        tokens._run = broken  # type: ignore[method-assign]
        await tokens.start()
    try:
        await eventually(lambda: supervision.failure() is not None, 5, "the failure reported")
        assert "a bug" in supervision.failure()
    finally:
        await sink.close()
        await tokens.close()


async def test_every_request_is_one_status_object(
    tmp_path: Path, endpoint: TokenEndpoint, creds
) -> None:
    """An event spooled without logger_name (by an older relay) still reaches the service as
    one object saying STATUS: the service would acknowledge anything else and drop it."""
    peer = await started(ScriptedPeer(lambda token, metadata, data: None))
    try:
        async with Relay(tmp_path, peer, endpoint, creds) as relay:
            await relay.add_raw([orjson.dumps({"n": i, "status": "LEVERT"}) for i in range(20)])
            await relay.add(20)
            await eventually(lambda: relay.delivery.stats.delivered == 40, 10, "all delivered")
            assert len(peer.requests) == 40
            assert_one_status_object_each(peer)
    finally:
        await peer.close()


async def test_arrays_only_for_an_upstream_that_accepts_them(
    tmp_path: Path, endpoint: TokenEndpoint, creds
) -> None:
    peer = await started(ScriptedPeer(lambda token, metadata, data: None))
    try:
        async with Relay(
            tmp_path, peer, endpoint, creds, batch_size=10, accepts_arrays=True
        ) as relay:
            await relay.add(100)
            await eventually(lambda: relay.delivery.stats.delivered == 100, 10, "all delivered")
            arrays = [orjson.loads(data) for _, _, data, _ in peer.requests]
            assert all(isinstance(a, list) for a in arrays)
            assert sum(len(a) for a in arrays) == 100
    finally:
        await peer.close()


def test_no_array_for_an_upstream_that_does_not_accept_them() -> None:
    from relay.delivery.payload import request_data, status_data

    with pytest.raises(ValueError):
        request_data([b"{}", b"{}"], 10, accepts_arrays=False)
    assert orjson.loads(status_data(b'{"a":1}')) == {"a": 1, "logger_name": "STATUS"}
    with pytest.raises(ValueError):
        status_data(b'{"logger_name":"OTHER"}')
    with pytest.raises(ValueError):
        status_data(b"[1,2]")
