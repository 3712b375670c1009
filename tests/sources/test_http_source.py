"""The HTTP source on a real socket, with a real spool file behind it."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from tests.helpers import InProcessRelay, inprocess_relay, make_event

PERSONAL_NUMBER = "12345678901"


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[InProcessRelay]:
    async with inprocess_relay(tmp_path) as r:
        await r.start_http()
        yield r


JSON = {"Content-Type": "application/json"}
NDJSON = {"Content-Type": "application/x-ndjson"}


async def test_one_event_is_accepted_then_a_duplicate(relay: InProcessRelay) -> None:
    event = orjson.dumps(make_event())
    status, body, _ = await relay.post(event, **JSON)
    assert (status, orjson.loads(body)) == (200, {"accepted": 1})
    status, body, _ = await relay.post(event, **JSON)
    assert (status, orjson.loads(body)) == (200, {"duplicates": 1})
    assert relay.spool.stats().events == 1


@pytest.mark.parametrize("path", ["/api/status", "/logging/api/status"])
async def test_both_paths_of_the_real_service(relay: InProcessRelay, path: str) -> None:
    status, _, _ = await relay.post(orjson.dumps(make_event()), path=path, **JSON)
    assert status == 200


async def test_invalid_event_gets_the_real_services_message(relay: InProcessRelay) -> None:
    status, body, headers = await relay.post(orjson.dumps(make_event(sender="971203420")), **JSON)
    assert status == 400
    assert headers["Content-Type"].startswith("text/plain")
    assert body.decode() == "Sender field (971203420) is not valid ISO6523 format."
    status, body, _ = await relay.post(orjson.dumps(make_event(message_id="nope")), **JSON)
    assert (status, body.decode()) == (400, "message_id and conversation_id must be of type UUID")
    assert relay.spool.stats().events == 0


async def test_ndjson_with_invalid_lines(relay: InProcessRelay) -> None:
    bad = {17, 500, 998}
    lines = [
        orjson.dumps(make_event(sender="bad") if i in bad else make_event()) for i in range(1000)
    ]
    status, body, _ = await relay.post(b"\n".join(lines) + b"\n", **NDJSON)
    answer = orjson.loads(body)
    assert status == 200
    assert (answer["accepted"], answer["duplicates"], answer["dead_lettered"]) == (997, 0, 3)
    assert [e["index"] for e in answer["errors"]] == sorted(bad)
    assert "is not valid ISO6523 format" in answer["errors"][0]["error"]
    stats = relay.spool.stats()
    assert (stats.events, stats.dead_letters) == (997, 3)


async def test_json_array_and_jsonlines_type(relay: InProcessRelay) -> None:
    events = [make_event(), make_event(status="BOGUS"), "not an object"]
    status, body, _ = await relay.post(orjson.dumps(events), **JSON)
    answer = orjson.loads(body)
    assert status == 200
    assert (answer["accepted"], answer["dead_lettered"]) == (1, 2)
    assert "BOGUS" in answer["errors"][0]["error"]
    lines = b"\n".join(orjson.dumps(make_event()) for _ in range(3))
    status, body, _ = await relay.post(lines, **{"Content-Type": "application/jsonlines"})
    assert (status, orjson.loads(body)["accepted"]) == (200, 3)


async def test_ndjson_line_that_is_not_json_is_dead_lettered(relay: InProcessRelay) -> None:
    body = orjson.dumps(make_event()) + b"\n{not json\n"
    status, answer, _ = await relay.post(body, **NDJSON)
    answer = orjson.loads(answer)
    assert (status, answer["accepted"], answer["dead_lettered"]) == (200, 1, 1)
    assert answer["errors"][0]["index"] == 1


@pytest.mark.parametrize(
    "encoding, compress",
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda d: zlib.compress(d, wbits=-15)),
    ],
)
async def test_compressed_bodies(relay: InProcessRelay, encoding: str, compress) -> None:
    data = compress(orjson.dumps(make_event()))
    status, body, _ = await relay.post(data, **JSON, **{"Content-Encoding": encoding})
    assert (status, orjson.loads(body)) == (200, {"accepted": 1})


async def test_error_statuses(relay: InProcessRelay) -> None:
    event = orjson.dumps(make_event())
    assert (await relay.post(event, **JSON, **{"Content-Encoding": "br"}))[0] == 415
    assert (await relay.post(event, **{"Content-Type": "application/xml"}))[0] == 415
    assert (await relay.post(b"this is not json", **JSON))[0] == 400
    assert (await relay.post(b"[]", **JSON))[0] == 400
    assert (await relay.post(b"\x1f\x8b broken", **JSON, **{"Content-Encoding": "gzip"}))[0] == 400
    too_big = b"[" + b",".join([event] * 3000) + b"]"
    assert (await relay.post(too_big, **JSON))[0] == 413
    bomb = gzip.compress(b" " * (5 << 20))
    assert (await relay.post(bomb, **JSON, **{"Content-Encoding": "gzip"}))[0] == 413
    large_event = orjson.dumps(make_event(description="x" * 5000))
    status, body, _ = await relay.post(large_event, **JSON)
    assert status == 400 and b"(ingest.max_event_bytes)" in body
    assert relay.spool.stats().events == 0


async def test_curl_default_content_type_is_read_as_json(relay: InProcessRelay) -> None:
    event = orjson.dumps(make_event())
    ctype = {"Content-Type": "application/x-www-form-urlencoded"}
    assert (await relay.post(event, **ctype))[0] == 200


async def test_personal_numbers_never_reach_the_spool_file(relay: InProcessRelay) -> None:
    valid = make_event(receiver=PERSONAL_NUMBER, service_identifier="DPI")
    invalid = make_event(receiver=PERSONAL_NUMBER, sender="nope")
    assert (await relay.post(orjson.dumps(valid), **JSON))[0] == 200
    assert (await relay.post(orjson.dumps([valid, invalid]), **JSON))[0] == 200
    lines = (
        orjson.dumps(make_event(receiver_org_number=PERSONAL_NUMBER))
        + b"\n"
        + b"{"
        + (PERSONAL_NUMBER.encode())
    )
    assert (await relay.post(lines, **NDJSON))[0] == 200
    await relay.spool.close()  # checkpoint, so everything is in the files we read
    spool_dir = Path(relay.spool.directory)
    blob = b"".join(p.read_bytes() for p in spool_dir.rglob("*") if p.is_file())
    assert blob, "spool files are empty"
    assert PERSONAL_NUMBER.encode() not in blob


async def test_healthz_and_readyz(relay: InProcessRelay) -> None:
    async with relay.session.get(relay.url + "/healthz") as r:
        assert r.status == 200
    async with relay.session.get(relay.url + "/readyz") as r:
        assert r.status == 200


async def test_auth_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    event = orjson.dumps(make_event())
    async with inprocess_relay(tmp_path) as r:
        await r.start_http(auth_token_file=str(token_file))
        assert (await r.post(event, **JSON))[0] == 401
        assert (await r.post(event, **JSON, Authorization="Bearer wrong"))[0] == 401
        assert (await r.post(event, **JSON, Authorization="Bearer s3cret-token"))[0] == 200
    assert r.spool.stats().events == 1


async def test_full_spool_answers_503_with_retry_after(tmp_path: Path) -> None:
    async with inprocess_relay(tmp_path, max_bytes=3000) as r:
        await r.start_http()
        statuses = [(await r.post(orjson.dumps(make_event()), **JSON)) for _ in range(20)]
        codes = [s for s, _, _ in statuses]
        assert codes[0] == 200 and codes[-1] == 503
        refused = next(h for s, _, h in statuses if s == 503)
        assert int(refused["Retry-After"]) > 0
        accepted = codes.count(200)
        async with r.session.get(r.url + "/readyz") as ready:
            assert ready.status == 503
    assert r.spool.stats().events == accepted
    assert r.rejected("http", "spool_full") == 20 - accepted


async def test_failed_write_answers_503_and_no_ack(tmp_path: Path) -> None:
    async with inprocess_relay(tmp_path, max_page_count=30) as r:
        await r.start_http()
        accepted = 0
        for _ in range(2000):
            status, _, _ = await r.post(orjson.dumps(make_event(description="y" * 1500)), **JSON)
            if status != 200:
                break
            accepted += 1
        assert status == 503
        async with r.session.get(r.url + "/readyz") as ready:
            assert ready.status == 503
            assert "full" in (await ready.text())
    assert r.spool.stats().events == accepted


async def test_counters_follow_what_happened(relay: InProcessRelay) -> None:
    event = orjson.dumps(make_event())
    await relay.post(event, **JSON)
    await relay.post(event, **JSON)
    await relay.post(orjson.dumps([make_event(), make_event(status="NOPE")]), **JSON)
    counters = relay.intake.counters
    assert counters.received["http"] == 4
    assert counters.duplicates["http"] == 1
    assert relay.rejected("http", "invalid") == 1
    assert counters.dead_lettered["invalid"] == 1
    # declared at zero when the source starts, so dashboards see them
    assert relay.rejected("http", "not_kept") == 0 and ("http", "not_kept") in counters.rejected
