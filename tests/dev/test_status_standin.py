"""The status-service stand-in on real ports, with rsocket-py's and aiohttp's own clients."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from rsocket.error_codes import ErrorCode
from rsocket.extensions.helpers import authenticate_bearer, composite, route
from rsocket.extensions.mimetypes import WellKnownMimeTypes
from rsocket.frame import serialize_prefix_with_frame_size_header
from rsocket.helpers import single_transport_provider
from rsocket.payload import Payload
from rsocket.request_handler import BaseRequestHandler
from rsocket.rsocket_client import RSocketClient
from rsocket.transports.tcp import TransportTCP

from relay.dev.faults import StatusFaults
from relay.dev.status_service import StatusServiceStandIn
from relay.dev.upstream import StatusServer
from tests.helpers import eventually, make_event

SCOPE = "eformidling:dpo"
CLIENT_ID = "MOVE_IP_971203420"
ISSUER = "https://test.maskinporten.no/"
TIMEOUT = 5.0

_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_token(key: rsa.RSAPrivateKey = _KEY, **overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "client_id": CLIENT_ID,
        "scope": SCOPE,
        "iat": now,
        "exp": now + 120,
        "jti": str(uuid.uuid4()),
        "consumer": {"authority": "iso6523-actorid-upis", "ID": "0192:971203420"},
    }
    claims.update(overrides)
    return jwt.encode(claims, key, algorithm="RS256")


def verify_token(token: str) -> dict:
    return jwt.decode(
        token,
        _KEY.public_key(),
        algorithms=["RS256"],
        issuer=ISSUER,
        options={"require": ["exp", "iss"]},
    )


def status_event(**overrides: Any) -> dict:
    return make_event(logger_name="STATUS", **overrides)


class Events:
    """rsocket-py client handler that records what the server does to the connection."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()
        self.errors: list[tuple[ErrorCode, bytes]] = []

    def handler(self) -> BaseRequestHandler:
        events = self

        class Handler(BaseRequestHandler):
            async def on_error(self, error_code, payload):
                events.errors.append((error_code, payload.data))

            async def on_close(self, rsocket, exception=None):
                events.closed.set()

        return Handler()


@asynccontextmanager
async def rsocket_client(
    port: int,
    events: Events | None = None,
    metadata_encoding: WellKnownMimeTypes = WellKnownMimeTypes.MESSAGE_RSOCKET_COMPOSITE_METADATA,
) -> AsyncIterator[RSocketClient]:
    events = events or Events()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = RSocketClient(
        single_transport_provider(TransportTCP(reader, writer)),
        handler_factory=events.handler,
        metadata_encoding=metadata_encoding,
        data_encoding=WellKnownMimeTypes.APPLICATION_JSON,
        keep_alive_period=timedelta(seconds=20),
        max_lifetime_period=timedelta(seconds=90),
    )
    async with client:
        yield client


def metadata(token: str | None = None, tag: str = "log-fire") -> bytes:
    items = [route(tag)]
    if token is not None:
        items.append(authenticate_bearer(token))
    return composite(*items)


def string_mime_entry(mime: bytes, data: bytes) -> bytes:
    """A composite-metadata entry whose MIME is written as a string, not a well-known id."""
    return bytes([len(mime) - 1]) + mime + len(data).to_bytes(3, "big") + data


async def send(
    client: RSocketClient, event: object, meta: bytes | None = None, token: str | None = None
) -> Payload:
    if meta is None:
        meta = metadata(token or make_token())
    payload = Payload(orjson.dumps(event), meta)
    return await asyncio.wait_for(client.request_response(payload), TIMEOUT)


async def refused(client: RSocketClient, event: object, **kw: Any) -> str:
    """The APPLICATION_ERROR text; rsocket-py raises exactly RuntimeError for code 0x201."""
    with pytest.raises(RuntimeError) as info:
        await send(client, event, **kw)
    assert type(info.value) is RuntimeError
    return str(info.value)


class StandIn:
    def __init__(self, server: StatusServer) -> None:
        assert server.rsocket is not None and server.http is not None
        self.server = server
        self.service = server.service
        self.rsocket = server.rsocket
        self.port = server.rsocket.port
        self.url = f"http://127.0.0.1:{server.http.port}"
        self.session: aiohttp.ClientSession

    async def post(self, body: object, token: str | None = None, *, raw: bytes | None = None):
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else orjson.dumps(body)
        async with self.session.post(self.url + "/api/status", data=data, headers=headers) as r:
            return r.status, await r.text(), r.headers

    async def get(self, path: str, **params: str) -> Any:
        async with self.session.get(self.url + path, params=params) as r:
            assert r.status == 200, await r.text()
            return await r.json()


@pytest.fixture
async def standin(tmp_path: Path) -> AsyncIterator[StandIn]:
    service = StatusServiceStandIn(
        store_path=tmp_path / "status.db", verify_token=verify_token, scope=SCOPE
    )
    server = StatusServer(service)
    try:
        await server.start("127.0.0.1", rsocket_port=0, http_port=0)
        s = StandIn(server)
        async with aiohttp.ClientSession() as session:
            s.session = session
            yield s
    finally:
        await server.close()


# -- RSocket ---------------------------------------------------------------------------------


async def test_request_response_is_stored_before_the_ack(standin: StandIn) -> None:
    event = status_event()
    async with rsocket_client(standin.port) as client:
        answer = await send(client, event)
        assert not answer.data
        rows = standin.service.store.statuses(message_id=event["message_id"])
    assert len(rows) == 1
    received = rows[0].pop("_received")
    assert rows[0]["status"] == event["status"]
    assert rows[0]["sender_org_number"] == "971203420"
    assert received["transport"] == "rsocket"
    assert received["interaction"] == "request-response"
    assert received["client_id"] == CLIENT_ID
    assert isinstance(received["token_exp"], int)


async def test_fire_and_forget_is_stored(standin: StandIn) -> None:
    event = status_event()
    async with rsocket_client(standin.port) as client:
        payload = Payload(orjson.dumps(event), metadata(make_token()))
        await asyncio.wait_for(client.fire_and_forget(payload), TIMEOUT)
        store = standin.service.store
        await eventually(
            lambda: bool(store.statuses(message_id=event["message_id"])), TIMEOUT, "the event"
        )
    (row,) = store.statuses(message_id=event["message_id"])
    assert row["_received"]["interaction"] == "fire-and-forget"


@pytest.mark.parametrize("form", ["well-known id", "mime string", "legacy bearer"])
async def test_all_three_bearer_forms_are_accepted(standin: StandIn, form: str) -> None:
    token = make_token().encode()
    auth = {
        "well-known id": composite(authenticate_bearer(token.decode())),
        "mime string": string_mime_entry(b"message/x.rsocket.authentication.v0", b"\x81" + token),
        "legacy bearer": string_mime_entry(b"message/x.rsocket.authentication.bearer.v0", token),
    }[form]
    event = status_event()
    async with rsocket_client(standin.port) as client:
        await send(client, event, meta=composite(route("log-fire")) + auth)
    assert standin.service.store.statuses(message_id=event["message_id"])


_EXPIRED_AT = 1_700_000_000  # 2023-11-14T22:13:20Z


@pytest.mark.parametrize(
    "make_bad_token, text",
    [
        # made when the test runs, not at collection: a suite can outlive a 120 s token
        (lambda: None, "Access Denied"),
        (lambda: make_token(exp=_EXPIRED_AT), "Jwt expired at 2023-11-14T22:13:20Z"),
        (lambda: make_token(_OTHER_KEY), "Failed to validate the token"),
        (lambda: make_token(iss="https://maskinporten.no/"), "Failed to validate the token"),
        (lambda: make_token(scope="eformidling:dpv"), "Access Denied"),
        (
            lambda: "not-a-jwt",
            "An error occurred while attempting to decode the Jwt: "
            "Invalid JWT serialization: Missing dot delimiter(s)",
        ),
    ],
)
async def test_bad_tokens_get_spring_securitys_texts(
    standin: StandIn, make_bad_token, text: str
) -> None:
    token = make_bad_token()
    async with rsocket_client(standin.port) as client:
        assert await refused(client, status_event(), meta=metadata(token)) == text
        # The connection stays usable: the token is checked per request, not per connection.
        await send(client, status_event())
    assert standin.service.store.stats()["total"] == 1


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def test_a_token_is_verified_once_and_refused_once_it_expires(tmp_path: Path) -> None:
    clock = Clock()
    verified: list[str] = []

    def verify_on_clock(token: str) -> dict:
        verified.append(token)
        claims = jwt.decode(
            token,
            _KEY.public_key(),
            algorithms=["RS256"],
            issuer=ISSUER,
            options={"verify_exp": False},
        )
        if claims["exp"] + 60 <= clock():
            raise jwt.ExpiredSignatureError("Signature has expired")
        return claims

    service = StatusServiceStandIn(
        store_path=tmp_path / "status.db", verify_token=verify_on_clock, scope=SCOPE, clock=clock
    )
    server = StatusServer(service)
    try:
        await server.start("127.0.0.1", rsocket_port=0, http_port=None)
        assert server.rsocket is not None
        port = server.rsocket.port
        token = make_token(exp=int(clock()) + 100)
        async with rsocket_client(port) as client:
            for _ in range(3):
                await send(client, status_event(), token=token)
            assert verified == [token]

            # other tokens are never taken for the cached one
            header, payload, signature = token.split(".")
            claims = jwt.decode(token, options={"verify_signature": False})
            for bad, text in (
                (make_token(_OTHER_KEY, **claims), "Failed to validate the token"),
                (
                    f"{header}.{payload}.{make_token().split('.')[2]}",
                    "Failed to validate the token",
                ),
                (make_token(**dict(claims, scope="eformidling:dpv")), "Access Denied"),
            ):
                assert await refused(client, status_event(), meta=metadata(bad)) == text

            # Spring allows 60 s of clock skew past exp
            clock.now = claims["exp"] + 59
            await send(client, status_event(), token=token)
            clock.now = claims["exp"] + 60
            expired = (
                f"Jwt expired at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(claims['exp']))}"
            )
            for _ in range(2):
                assert await refused(client, status_event(), meta=metadata(token)) == expired
            assert verified.count(token) == 1
        assert service.store.stats()["total"] == 4
    finally:
        await server.close()


async def test_wrong_route_is_an_error(standin: StandIn) -> None:
    async with rsocket_client(standin.port) as client:
        text = await refused(client, status_event(), meta=metadata(make_token(), tag="log"))
        assert text == "No handler for destination 'log'"
        no_route = composite(authenticate_bearer(make_token()))
        assert await refused(client, status_event(), meta=no_route) == (
            "No handler for destination ''"
        )


async def test_what_the_service_cannot_use_is_acked_then_dropped(standin: StandIn) -> None:
    """The real service acks before decoding; the stand-in counts what it then drops."""
    unusable = [
        (orjson.dumps([status_event()]), "array"),
        (b"{not json", "invalid_json"),
        (orjson.dumps("a string"), "not_an_object"),
        (orjson.dumps(make_event()), "no_logger_name"),
        (orjson.dumps(make_event(logger_name="no.difi.Foo")), "not_status"),
        (orjson.dumps(status_event(sender="971203420")), "invalid_status"),
        (orjson.dumps(status_event(message_id="42")), "invalid_status"),
    ]
    async with rsocket_client(standin.port) as client:
        for data, _ in unusable:
            answer = await asyncio.wait_for(
                client.request_response(Payload(data, metadata(make_token()))), TIMEOUT
            )
            assert not answer.data
        await client.fire_and_forget(Payload(b"[]", metadata(make_token())))
        await eventually(
            lambda: standin.service.dropped.total == len(unusable) + 1, TIMEOUT, "the drops"
        )
    stats = await standin.get("/api/stats")
    assert stats["total"] == 0
    assert stats["dropped"] == len(unusable) + 1
    assert stats["dropped_by_reason"] == {
        "array": 2,
        "invalid_json": 1,
        "not_an_object": 1,
        "no_logger_name": 1,
        "not_status": 1,
        "invalid_status": 2,
    }
    assert stats["rsocket"]["errors"] == 0


async def test_arrays_are_stored_only_behind_the_accept_arrays_switch(standin: StandIn) -> None:
    async with rsocket_client(standin.port) as client:
        await send(client, [status_event(), status_event()])
        assert standin.service.dropped.by_reason == {"array": 1}
        standin.service.faults.update({"accept_arrays": True})
        await send(client, [status_event(), status_event(), make_event()])
    stats = await standin.get("/api/stats")
    assert (stats["total"], stats["requests"]) == (2, 1)
    assert stats["dropped_by_reason"] == {"array": 1, "no_logger_name": 1}


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, int, int, bytes]:
    """(stream id, frame type, flags, rest) of the next frame from the wire."""
    length = int.from_bytes(await reader.readexactly(3), "big")
    frame = await reader.readexactly(length)
    stream_id = int.from_bytes(frame[:4], "big")
    type_and_flags = int.from_bytes(frame[4:6], "big")
    return stream_id, type_and_flags >> 10, type_and_flags & 0x3FF, frame[6:]


@pytest.mark.parametrize("data", [orjson.dumps(status_event()), b"[1, 2]"])
async def test_the_ack_is_a_payload_frame_with_complete_only(standin: StandIn, data) -> None:
    from rsocket.frame_builders import to_request_response_frame, to_setup_frame

    setup = to_setup_frame(
        Payload(),
        WellKnownMimeTypes.APPLICATION_JSON.value.name,
        WellKnownMimeTypes.MESSAGE_RSOCKET_COMPOSITE_METADATA.value.name,
        timedelta(seconds=20),
        timedelta(seconds=90),
        False,
    )
    request = to_request_response_frame(1, Payload(data, metadata(make_token())))
    reader, writer = await asyncio.open_connection("127.0.0.1", standin.port)
    try:
        for frame in (setup, request):
            writer.write(serialize_prefix_with_frame_size_header(frame))
            frame.write_data_metadata(writer.write)
        while True:
            stream_id, kind, flags, rest = await asyncio.wait_for(read_frame(reader), TIMEOUT)
            if stream_id == 1:
                break
    finally:
        writer.close()
    assert kind == 0x0A  # PAYLOAD
    assert flags == 0x40  # COMPLETE; no NEXT (0x20), no METADATA (0x100)
    assert rest == b""


async def test_reject_faults_leave_other_requests_alone(standin: StandIn) -> None:
    faults = standin.service.faults
    faults.update({"reject_match": {"status": "FEIL"}, "reject_message": "nope"})
    async with rsocket_client(standin.port) as client:
        assert await refused(client, status_event(status="FEIL")) == "nope"
        await send(client, status_event(status="LEVERT"))
        faults.update({"reject_match": {}, "reject_fraction": 1.0})
        assert await refused(client, status_event(status="LEVERT")) == "nope"
        faults.update({"reject_fraction": 0.0})
        await send(client, status_event(status="FEIL"))
    assert standin.service.store.stats()["by_status"] == {"FEIL": 1, "LEVERT": 1}


async def test_delay_does_not_serialise_requests(standin: StandIn) -> None:
    standin.service.faults.delay = 0.3
    async with rsocket_client(standin.port) as client:
        token = make_token()
        started = time.monotonic()
        await asyncio.gather(*(send(client, status_event(), token=token) for _ in range(20)))
        elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 1.5, elapsed
    assert standin.service.store.stats()["total"] == 20


async def test_drop_after_closes_the_connection(standin: StandIn) -> None:
    standin.service.faults.drop_after = 3
    events = Events()
    async with rsocket_client(standin.port, events) as client:
        for _ in range(3):
            await send(client, status_event())
        await asyncio.wait_for(events.closed.wait(), TIMEOUT)
    rs = standin.rsocket
    await eventually(lambda: rs.connections_open == 0, TIMEOUT, "the connection closed")
    assert (rs.connections_total, rs.requests) == (1, 3)
    # A new connection gets its own count.
    async with rsocket_client(standin.port) as client:
        await send(client, status_event())
    assert standin.service.store.stats()["total"] == 4


async def test_setup_without_composite_metadata_is_rejected_and_closed(standin: StandIn) -> None:
    events = Events()
    async with rsocket_client(standin.port, events, WellKnownMimeTypes.APPLICATION_JSON):
        await asyncio.wait_for(events.closed.wait(), TIMEOUT)
    ((code, text),) = events.errors
    assert code == ErrorCode.REJECTED_SETUP
    assert b"composite-metadata" in text


async def test_close_closes_client_connections(standin: StandIn) -> None:
    events = Events()
    async with rsocket_client(standin.port, events) as client:
        await send(client, status_event())
        assert standin.rsocket.connections_open == 1
        await standin.rsocket.close()
        await asyncio.wait_for(events.closed.wait(), TIMEOUT)


# -- HTTP ------------------------------------------------------------------------------------


async def test_http_answers_like_the_service(standin: StandIn) -> None:
    event = make_event()  # over HTTP, logger_name defaults to STATUS
    status, body, _ = await standin.post(event, make_token())
    assert (status, body) == (200, "")
    (row,) = standin.service.store.statuses(message_id=event["message_id"])
    assert row["logger_name"] == "STATUS"
    assert row["_received"]["transport"] == "http"

    for bad, text in (
        (make_event(sender="971203420"), "Sender field (971203420) is not valid ISO6523 format."),
        (make_event(message_id="42"), "message_id and conversation_id must be of type UUID"),
    ):
        status, body, headers = await standin.post(bad, make_token())
        assert (status, body) == (400, text)
        assert headers["Content-Type"].startswith("text/plain")

    status, body, headers = await standin.post(make_event(), None)
    assert (status, body, headers["WWW-Authenticate"]) == (401, "", "Bearer")
    for token, reason in (
        ("garbage", "An error occurred while attempting to decode the Jwt"),
        (make_token(exp=_EXPIRED_AT), "Jwt expired at 2023-11-14T22:13:20Z"),
        (make_token(_OTHER_KEY), "Failed to validate the token"),
    ):
        status, body, headers = await standin.post(make_event(), token)
        assert (status, body) == (401, "")
        challenge = headers["WWW-Authenticate"]
        assert challenge.startswith('Bearer error="invalid_token", error_description="')
        assert reason in challenge


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        orjson.dumps([make_event()]),
        orjson.dumps(make_event(status="SENT")),
        orjson.dumps(make_event(conversation_id=None)),
        orjson.dumps({k: v for k, v in make_event().items() if k != "status"}),
        orjson.dumps(make_event(timestamp="2026-12-01T10:00:00+01:00")),
    ],
    ids=["not json", "array", "unknown status", "null", "missing", "offset"],
)
async def test_http_binding_failures_get_spring_boots_json_error(standin: StandIn, raw) -> None:
    status, body, headers = await standin.post(None, make_token(), raw=raw)
    assert status == 400
    assert headers["Content-Type"].startswith("application/json")
    error = orjson.loads(body)
    assert {k: error[k] for k in ("status", "error", "message", "path")} == {
        "status": 400,
        "error": "Bad Request",
        "message": "",
        "path": "/api/status",
    }
    assert standin.service.store.stats()["total"] == 0


async def test_http_status_fault_sends_retry_after(standin: StandIn) -> None:
    standin.service.faults.update({"http_status": 503, "retry_after": 7})
    status, _, headers = await standin.post(make_event(), make_token())
    assert (status, headers["Retry-After"]) == (503, "7")
    standin.service.faults.update({"http_fraction": 0.0})
    status, _, _ = await standin.post(make_event(), make_token())
    assert status == 200


async def test_statuses_filter_and_stats_count_duplicates(standin: StandIn) -> None:
    conversation = str(uuid.uuid4())
    first = make_event(conversation_id=conversation, status="OPPRETTET")
    second = dict(first, status="SENDT")
    other = make_event(status="FEIL", service_identifier="DPO")
    for event in (first, second, second, other):
        assert (await standin.post(event, make_token()))[0] == 200
    async with rsocket_client(standin.port) as client:
        await send(client, dict(second, logger_name="STATUS"))

    rows = await standin.get("/api/statuses", conversation_id=conversation)
    assert [r["status"] for r in rows] == ["OPPRETTET", "SENDT", "SENDT", "SENDT"]
    rows = await standin.get("/api/statuses", message_id=other["message_id"])
    assert [r["status"] for r in rows] == ["FEIL"]
    rows = await standin.get("/api/statuses", conversation_id=conversation, limit="2")
    assert [r["_received"]["transport"] for r in rows] == ["http", "rsocket"]

    stats = await standin.get("/api/stats")
    assert stats["total"] == 5
    assert stats["requests"] == 5
    assert stats["duplicates"] == 2
    assert stats["by_status"] == {"FEIL": 1, "OPPRETTET": 1, "SENDT": 3}
    assert stats["by_service_identifier"] == {"DPE": 4, "DPO": 1}
    assert [e["message_id"] for e in stats["recent_feil"]] == [other["message_id"]]
    assert stats["rsocket"]["connections_total"] == 1
    assert stats["rsocket"]["requests"] == 1
    assert stats["http"]["requests"] == 4


async def test_admin_faults_round_trip(standin: StandIn) -> None:
    url = standin.url + "/admin/faults"
    change = {"delay": 0.05, "reject_match": {"status": "FEIL"}, "http_status": 429}
    async with standin.session.post(url, json=change) as r:
        assert r.status == 200
        assert {k: (await r.json())[k] for k in change} == change
    assert standin.service.faults.reject_match == {"status": "FEIL"}
    assert (await standin.get("/admin/faults"))["http_status"] == 429

    for bad, culprit in (({"reject_ratio": 0.5}, "reject_ratio"), ({"delay": "1s"}, "delay")):
        async with standin.session.post(url, json=bad) as r:
            assert r.status == 400
            assert culprit in await r.text()
    assert standin.service.faults.delay == 0.05


def test_fault_update_is_all_or_nothing() -> None:
    faults = StatusFaults()
    with pytest.raises(ValueError, match="drop_after"):
        faults.update({"delay": 1, "drop_after": -1})
    assert faults.delay == 0.0
    with pytest.raises(ValueError, match="reject_fraction"):
        StatusFaults(reject_fraction=2)


async def test_ack_only_checks_and_counts_but_stores_nothing(standin: StandIn) -> None:
    url = standin.url
    async with standin.session.post(url + "/admin/faults", json={"ack_only": True}) as r:
        assert r.status == 200
        assert (await r.json())["ack_only"] is True
    token = make_token()
    async with rsocket_client(standin.port) as client:
        await send(client, status_event(), token=token)
        standin.service.faults.update({"accept_arrays": True})
        await send(client, [status_event(), status_event()], token=token)
        await send(client, make_event(), token=token)  # acked, dropped
        text = await refused(client, status_event(), meta=metadata(make_token(_OTHER_KEY)))
        assert text == "Failed to validate the token"
        await client.fire_and_forget(Payload(orjson.dumps(status_event()), metadata(token)))
        await eventually(lambda: standin.service.acked.requests == 4, TIMEOUT, "4 acks")
    assert (await standin.post(status_event(), token))[0] == 200
    assert (await standin.post(status_event(message_id="42"), token))[0] == 400

    stats = await standin.get("/api/stats")
    assert "total" not in stats
    assert stats["dropped"] == 1
    acked = stats["acked"]
    assert (acked["requests"], acked["events"]) == (5, 5)
    assert acked["first_at"] <= acked["last_at"]
    assert standin.service.store.statuses() == []

    async with standin.session.post(url + "/admin/stats/reset") as r:
        assert r.status == 200
        assert (await r.json())["acked"]["events"] == 5
    stats = await standin.get("/api/stats")
    assert stats["acked"] == {"requests": 0, "events": 0, "first_at": None, "last_at": None}

    standin.service.faults.update({"ack_only": False})
    assert (await standin.post(status_event(), token))[0] == 200
    stats = await standin.get("/api/stats")
    assert (stats["total"], stats["acked"]["events"]) == (1, 1)


# -- token faults, for the relay's acceptance tests --------------------------------------------


async def test_refuse_first_tokens_refuses_only_the_first_tokens_seen(standin: StandIn) -> None:
    async with standin.session.post(
        standin.url + "/admin/faults", json={"refuse_first_tokens": 1}
    ) as r:
        assert r.status == 200
    first, second = make_token(), make_token()
    async with rsocket_client(standin.port) as client:
        for _ in range(2):  # the first token stays refused, every time
            text = await refused(client, status_event(), meta=metadata(first))
            assert text == "Failed to validate the token"
        await send(client, status_event(), token=second)
        await send(client, status_event(), token=second)
        text = await refused(client, status_event(), meta=metadata(first))
        assert text == "Failed to validate the token"
        # setting the switch again counts afresh
        standin.service.faults.update({"refuse_first_tokens": 1})
        third = make_token()
        text = await refused(client, status_event(), meta=metadata(third))
        assert text == "Failed to validate the token"
        await send(client, status_event(), token=first)
    status, _, headers = await standin.post(make_event(), third)
    assert status == 401 and "Failed to validate the token" in headers["WWW-Authenticate"]
    assert standin.service.store.stats()["total"] == 3


async def test_refuse_tokens_text_refuses_every_token(standin: StandIn) -> None:
    standin.service.faults.update({"refuse_tokens_text": "Jwt expired at 2026-12-01T10:00:00Z"})
    async with rsocket_client(standin.port) as client:
        for _ in range(3):
            assert await refused(client, status_event()) == "Jwt expired at 2026-12-01T10:00:00Z"
        standin.service.faults.update({"refuse_tokens_text": ""})
        await send(client, status_event())
    assert standin.service.store.stats()["total"] == 1


@pytest.mark.parametrize("code", [ErrorCode.REJECTED, ErrorCode.INVALID])
async def test_reject_code_chooses_the_error_frame(standin: StandIn, code: ErrorCode) -> None:
    from rsocket.exceptions import RSocketProtocolError

    standin.service.faults.update(
        {"reject_fraction": 1.0, "reject_message": "busy", "reject_code": code.name}
    )
    async with rsocket_client(standin.port) as client:
        with pytest.raises(RSocketProtocolError) as info:
            await send(client, status_event())
    assert info.value.error_code == code


async def test_dev_upstream_keeps_its_token_signing_key_across_restarts(tmp_path: Path) -> None:
    from relay.dev.upstream import DevUpstream

    tokens: list[str] = []
    mp_port = 0
    for _ in range(2):
        up = DevUpstream(tmp_path / "up", accept_arrays=True)
        # the same Maskinporten port: the issuer (which names it) stays the same
        addresses = await up.start(rsocket_port=0, http_port=0, maskinporten_port=mp_port)
        mp_port = addresses.maskinporten_port
        try:
            mp = up.maskinporten
            issued = mp._issue(up.client_id, mp.clients[up.client_id], up.scope, "test")
            tokens.append(issued["access_token"])
            # a token of the run before is still accepted after a restart
            assert up.status.authorise(tokens[0])["client_id"] == up.client_id
            assert up.status.faults.accept_arrays is True
            assert "accepts_arrays = true" in (tmp_path / "up" / "relay.toml").read_text()
        finally:
            await up.close()
