"""The Node.js status-service peer (tests/node/status-server.js), checked with rsocket-py alone.

Nothing of relay is used here: this proves the peer behaves like the real Spring service (SETUP,
routing, bearer JWT on every request, acknowledgement, errors) so that relay's client can later
be tested against it with confidence.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from rsocket.error_codes import ErrorCode
from rsocket.extensions.helpers import authenticate_bearer, composite, route
from rsocket.extensions.mimetypes import WellKnownMimeTypes
from rsocket.frame import (
    ErrorFrame,
    Frame,
    PayloadFrame,
    parse_or_ignore,
    serialize_prefix_with_frame_size_header,
    serialize_with_frame_size_header,
)
from rsocket.frame_builders import to_request_response_frame, to_setup_frame
from rsocket.helpers import single_transport_provider, wrap_transport_exception
from rsocket.payload import Payload
from rsocket.rsocket_client import RSocketClient
from rsocket.transports.tcp import TransportTCP

from tests import helpers
from tests.helpers import eventually

NODE = shutil.which("node")
NODE_DIR = Path(__file__).resolve().parents[1] / "node"
SERVER_JS = NODE_DIR / "status-server.js"

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(NODE is None, reason="node is not installed"),
    pytest.mark.skipif(
        not (NODE_DIR / "node_modules").is_dir(),
        reason="tests/node/node_modules is absent: run `npm ci --prefix tests/node`",
    ),
]

KID = "test-key-1"
SCOPE = "eformidling:dpo"
CLIENT_ID = "MOVE_IP_971203420"
COMPOSITE_MIME = b"message/x.rsocket.composite-metadata.v0"
TIMEOUT = 15.0


def make_event(**overrides: object) -> dict:
    """An event as the relay sends it over RSocket: the real route stores only STATUS."""
    return helpers.make_event(**{"logger_name": "STATUS", **overrides})


# --- keys, tokens, JWKS ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_token(
    key: rsa.RSAPrivateKey,
    *,
    kid: str = KID,
    client_id: str = CLIENT_ID,
    scope: str = f"{SCOPE} eformidling:dpe",
    lifetime: int = 120,
) -> str:
    now = int(time.time())
    claims = {
        "iss": "https://test.maskinporten.no/",
        "client_id": client_id,
        "client_amr": "virksomhetssertifikat",
        "scope": scope,
        "consumer": {"authority": "iso6523-actorid-upis", "ID": "0192:971203420"},
        "iat": now,
        "exp": now + lifetime,
        "jti": str(uuid.uuid4()),
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


@dataclass
class Jwks:
    url: str
    hits: list[float] = field(default_factory=list)


@pytest.fixture
async def jwks(rsa_key: rsa.RSAPrivateKey) -> AsyncIterator[Jwks]:
    public = json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key()))
    public.update(kid=KID, use="sig", alg="RS256")
    served = Jwks(url="")

    async def handler(request: web.Request) -> web.Response:
        served.hits.append(time.monotonic())
        return web.json_response({"keys": [public]})

    app = web.Application()
    app.router.add_get("/jwk", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    served.url = f"http://127.0.0.1:{runner.addresses[0][1]}/jwk"
    yield served
    await runner.cleanup()


# --- the Node peer --------------------------------------------------------------------------


@dataclass
class NodePeer:
    port: int
    out: Path
    stderr_path: Path

    def lines(self) -> list[dict]:
        text = self.out.read_text() if self.out.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def events(self) -> list[dict]:
        return [line for line in self.lines() if "event" in line]

    def dropped(self) -> list[str]:
        return [line["dropped"] for line in self.lines() if "dropped" in line]

    def setups(self) -> list[dict]:
        return [line["setup"] for line in self.lines() if "setup" in line]

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def wait_for_events(self, count: int, timeout: float = TIMEOUT) -> list[dict]:
        try:
            await eventually(lambda: len(self.events()) >= count, timeout, f"{count} events")
        except AssertionError as err:
            raise AssertionError(f"{err}; {len(self.events())} came:\n{self.stderr()}") from None
        return self.events()


@pytest.fixture
async def peer(tmp_path: Path, jwks: Jwks) -> AsyncIterator[NodePeer]:
    out = tmp_path / "events.jsonl"
    stderr_path = tmp_path / "status-server.stderr"
    with stderr_path.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            NODE,
            str(SERVER_JS),
            "--port",
            "0",
            "--jwks-url",
            jwks.url,
            "--out",
            str(out),
            "--scope",
            SCOPE,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)
        assert line.startswith(b"LISTENING "), f"{line!r}\n{stderr_path.read_text()}"
        node_peer = NodePeer(int(line.split()[1]), out, stderr_path)
        yield node_peer
        assert proc.returncode is None, f"the Node peer died:\n{node_peer.stderr()}"
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


# --- rsocket-py client ----------------------------------------------------------------------


class OneWriteTransportTCP(TransportTCP):
    """Each frame in one write(): rsocket-js alpha.3 must not see a SETUP split across reads."""

    async def serialize_partial(self, frame: Frame) -> None:
        with wrap_transport_exception():
            buffer = bytearray(serialize_prefix_with_frame_size_header(frame))
            frame.write_data_metadata(buffer.extend)
            self._writer.write(buffer)
            await self._writer.drain()


@asynccontextmanager
async def connect(port: int, **options: object) -> AsyncIterator[RSocketClient]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    settings: dict = {
        "metadata_encoding": WellKnownMimeTypes.MESSAGE_RSOCKET_COMPOSITE_METADATA,
        "data_encoding": WellKnownMimeTypes.APPLICATION_JSON,
        "keep_alive_period": timedelta(seconds=20),
        "max_lifetime_period": timedelta(seconds=90),
        **options,
    }
    client = RSocketClient(
        single_transport_provider(OneWriteTransportTCP(reader, writer)), **settings
    )
    async with client:
        yield client


def request(event: object, token: str | None, path: str = "log-fire") -> Payload:
    items = [route(path)]
    if token is not None:
        items.append(authenticate_bearer(token))
    return Payload(json.dumps(event).encode(), composite(*items))


async def rr(client: RSocketClient, payload: Payload) -> Payload:
    return await asyncio.wait_for(client.request_response(payload), TIMEOUT)


def explicit_entry(mime: bytes, content: bytes) -> bytes:
    """A composite-metadata entry whose MIME is written as a string, not a well-known id."""
    return bytes([len(mime) - 1]) + mime + struct.pack(">I", len(content))[1:] + content


def raw_setup(data_mime: bytes = b"application/json", metadata_mime: bytes = COMPOSITE_MIME):
    frame = to_setup_frame(
        None, data_mime, metadata_mime, timedelta(seconds=20), timedelta(seconds=90)
    )
    return serialize_with_frame_size_header(frame)


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    header = await asyncio.wait_for(reader.readexactly(3), TIMEOUT)
    body = await asyncio.wait_for(reader.readexactly(int.from_bytes(header, "big")), TIMEOUT)
    return parse_or_ignore(body)


# --- tests ----------------------------------------------------------------------------------


async def test_setup_and_request_response_are_recorded(peer: NodePeer, rsa_key) -> None:
    token = make_token(rsa_key)
    event = make_event()
    async with connect(peer.port) as client:
        answer = await rr(client, request(event, token))
        assert not answer.data and not answer.metadata
        # The line is on disk as soon as the acknowledgement arrives.
        [line] = peer.events()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert line == {
        "event": event,
        "client_id": CLIENT_ID,
        "jti": claims["jti"],
        "exp": claims["exp"],
        "interaction": "request-response",
        "conn": 1,
    }
    [setup] = peer.setups()
    assert setup["accepted"] is True
    assert setup["metadata_mime_type"] == COMPOSITE_MIME.decode()
    assert setup["data_mime_type"] == "application/json"
    assert setup["keepalive_interval_ms"] == 20_000
    assert setup["max_lifetime_ms"] == 90_000
    assert not setup["has_metadata"] and not setup["has_data"]
    assert peer.lines()[0] == {"setup": setup}


async def test_bad_tokens_get_spring_texts_and_the_connection_survives(
    peer: NodePeer, rsa_key
) -> None:
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    expired = make_token(rsa_key, lifetime=-61)  # beyond Spring's 60 s of clock skew
    exp = jwt.decode(expired, options={"verify_signature": False})["exp"]
    bad = {
        "signed by another key": (make_token(other_key), "Failed to validate the token"),
        "expired": (
            expired,
            f"Jwt expired at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(exp))}",
        ),
        "without the scope": (make_token(rsa_key, scope="eformidling:dpe"), "Access Denied"),
        "unknown kid": (make_token(rsa_key, kid="nobody"), "Failed to validate the token"),
        "not a JWT": (
            "abc.def",
            "An error occurred while attempting to decode the Jwt: "
            "Invalid JWT serialization: Missing dot delimiter(s)",
        ),
        "missing": (None, "Access Denied"),
    }
    async with connect(peer.port) as client:
        for what, (token, text) in bad.items():
            with pytest.raises(RuntimeError) as error:
                await rr(client, request(make_event(), token))
            assert str(error.value) == text, what

        with pytest.raises(RuntimeError, match="^No handler for destination 'log-other'$"):
            await rr(client, request(make_event(), make_token(rsa_key), path="log-other"))
        # 5 s into the skew: still accepted, as Spring does
        await rr(client, request(make_event(), make_token(rsa_key, lifetime=-5)))
    assert len(peer.events()) == 1


async def test_what_the_service_cannot_use_is_acked_then_dropped(peer: NodePeer, rsa_key) -> None:
    meta = request({}, make_token(rsa_key)).metadata
    unusable = {
        b"{not json": "invalid_json",
        json.dumps([make_event()]).encode(): "array",
        json.dumps({k: v for k, v in make_event().items() if k != "logger_name"}).encode(): (
            "no_logger_name"
        ),
        json.dumps(make_event(logger_name="no.difi.Other")).encode(): "not_status",
        b'"a string"': "not_an_object",
    }
    async with connect(peer.port) as client:
        for data in unusable:
            answer = await rr(client, Payload(data, meta))
            assert not answer.data
    assert peer.events() == []
    assert peer.dropped() == list(unusable.values())


async def test_200_concurrent_request_responses(peer: NodePeer, rsa_key, jwks: Jwks) -> None:
    token = make_token(rsa_key)
    batches = [[make_event() for _ in range(n)] for n in (200, 20, 20)]
    async with connect(peer.port) as a, connect(peer.port) as b, connect(peer.port) as c:
        await asyncio.gather(
            *(
                rr(client, request(event, token))
                for client, batch in zip((a, b, c), batches, strict=True)
                for event in batch
            )
        )
        recorded = peer.events()
    by_conn: dict[int, set[str]] = {}
    for line in recorded:
        by_conn.setdefault(line["conn"], set()).add(line["event"]["message_id"])
    assert {frozenset(ids) for ids in by_conn.values()} == {
        frozenset(event["message_id"] for event in batch) for batch in batches
    }, "each connection's own events, all of them"
    assert {line["interaction"] for line in recorded} == {"request-response"}
    assert len(recorded) == 240
    assert len(jwks.hits) == 1, "the JWKS is fetched once and cached"


async def test_all_three_auth_forms_and_fire_and_forget(peer: NodePeer, rsa_key) -> None:
    token = make_token(rsa_key, client_id="MOVE_IP_991825827").encode()
    routing = composite(route("log-fire"))
    full_string = explicit_entry(b"message/x.rsocket.authentication.v0", b"\x81" + token)
    legacy = explicit_entry(b"message/x.rsocket.authentication.bearer.v0", token)
    first, second, third = make_event(), make_event(), make_event()
    async with connect(peer.port) as client:
        await rr(client, Payload(json.dumps(first).encode(), routing + full_string))
        await rr(client, Payload(json.dumps(second).encode(), routing + legacy))
        await rr(client, Payload(json.dumps(third).encode(), routing + legacy))
        fnf = make_event(status="LEST")
        await client.fire_and_forget(request(fnf, token.decode()))
        lines = await peer.wait_for_events(4)
    assert [line["event"] for line in lines] == [first, second, third, fnf]
    assert [line["interaction"] for line in lines] == ["request-response"] * 3 + ["fire-and-forget"]
    assert {line["client_id"] for line in lines} == {"MOVE_IP_991825827"}


async def test_setup_with_the_wrong_mime_types_is_rejected(peer: NodePeer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", peer.port)
    try:
        writer.write(raw_setup(data_mime=b"text/plain"))
        frame = await read_frame(reader)
        assert isinstance(frame, ErrorFrame) and frame.stream_id == 0
        assert frame.error_code == ErrorCode.REJECTED_SETUP
        assert b"data MIME type" in frame.data
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b"", "closed after rejecting"
    finally:
        writer.close()
    [setup] = peer.setups()
    assert setup["accepted"] is False and setup["data_mime_type"] == "text/plain"


async def test_a_setup_split_across_tcp_reads_and_a_disconnect_do_not_kill_it(
    peer: NodePeer, rsa_key
) -> None:
    setup = raw_setup()
    payload = request(make_event(), make_token(rsa_key))
    reader, writer = await asyncio.open_connection("127.0.0.1", peer.port)
    try:
        # The pauses are the test, not a wait for a condition: each part must reach the peer
        # in a read of its own (there is nothing the peer does in between to wait for).
        for part in (setup[:2], setup[2:20], setup[20:]):
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.1)
        rr_frame = serialize_with_frame_size_header(to_request_response_frame(1, payload))
        writer.write(rr_frame[:10])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(rr_frame[10:])
        frame = await read_frame(reader)
        assert isinstance(frame, PayloadFrame) and frame.stream_id == 1, frame
        assert frame.flags_complete and not frame.data
    finally:
        writer.close()

    # Garbage, an early hang-up, and a client that vanishes with requests in flight.
    for junk in (b"\x00\x00", b"\x00\x00\x08\xff\xff\xff\xff\xff\xff\xff\xff", b"HTTP/1.1\r\n\r\n"):
        _, writer = await asyncio.open_connection("127.0.0.1", peer.port)
        writer.write(junk)
        await writer.drain()
        writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", peer.port)
    second = serialize_with_frame_size_header(to_request_response_frame(3, payload))
    writer.write(setup + rr_frame + second)
    await writer.drain()
    writer.transport.abort()

    async with connect(peer.port) as client:
        await rr(client, request(make_event(), make_token(rsa_key)))
    assert peer.events()
