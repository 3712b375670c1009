"""Hostile input against the HTTP source stays bounded: compression tricks, bodies that are not
what they claim, item bombs, large bodies, slow and idle clients, garbage headers. Real sockets
on 127.0.0.1 and a real spool file, as in test_http_source."""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest

from relay.sources import body
from relay.spool import list_dead_letters
from tests.helpers import InProcessRelay as Relay
from tests.helpers import eventually, inprocess_relay, make_event

JSON = {"Content-Type": "application/json"}
NDJSON = {"Content-Type": "application/x-ndjson"}
GZIP = {"Content-Encoding": "gzip"}


@asynccontextmanager
async def relay_with(tmp_path: Path, max_bytes: int = 1 << 30, **http) -> AsyncIterator[Relay]:
    async with inprocess_relay(tmp_path, max_bytes=max_bytes) as relay:
        await relay.start_http(**http)
        yield relay


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[Relay]:
    async with relay_with(tmp_path) as r:
        yield r


def line(event: dict | None = None) -> bytes:
    return orjson.dumps(event or make_event()) + b"\n"


def dead_letter_bodies(relay: Relay) -> list[bytes]:
    return [bytes(d.body) for d in list_dead_letters(relay.spool.directory)]


# --- 1. compression ------------------------------------------------------------------------


async def test_every_gzip_member_is_read(relay: Relay) -> None:
    two_members = gzip.compress(line()) + gzip.compress(line())  # what `cat a.gz b.gz` makes
    status, answer, _ = await relay.post(two_members, **NDJSON, **GZIP)
    assert (status, orjson.loads(answer)["accepted"]) == (200, 2)
    assert relay.spool.stats().events == 2


@pytest.mark.parametrize(
    "compressed, encoding",
    [
        (gzip.compress(line()) + b"garbage", "gzip"),
        (gzip.compress(line()) + b"\0\0\0\0", "gzip"),
        (zlib.compress(line()) + b"trailing", "deflate"),
        (zlib.compress(line(), wbits=-15) + zlib.compress(line(), wbits=-15), "deflate"),
    ],
)
async def test_bytes_after_the_compressed_stream_are_a_400(
    relay: Relay, compressed: bytes, encoding: str
) -> None:
    status, answer, _ = await relay.post(compressed, **NDJSON, **{"Content-Encoding": encoding})
    assert status == 400, answer
    assert b"after the end of its" in answer
    assert relay.spool.stats().events == 0


def test_gzip_members_together_are_bounded_by_the_limit() -> None:
    member = gzip.compress(b" " * 600_000)
    assert len(body.decompress(member, "gzip", 1_000_000)) == 600_000
    with pytest.raises(body.BodyError) as err:
        body.decompress(member + member, "gzip", 1_000_000)
    assert err.value.status == 413


# --- 2. sniffing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        line() + b'{"status": "LEVERT", "message_id": ',  # the last object cut short
        line() + b"[1, 2]\n",  # a line that is JSON but not an object
        b"1\n2\n",
        orjson.dumps(make_event(), option=orjson.OPT_INDENT_2)[:-20],  # pretty and truncated
    ],
)
async def test_json_body_that_is_not_one_object_per_line_is_a_400(
    relay: Relay, data: bytes
) -> None:
    status, answer, _ = await relay.post(data, **JSON)
    assert status == 400
    assert answer.startswith(b"body is not valid JSON: ")
    stats = relay.spool.stats()
    assert (stats.events, stats.dead_letters) == (0, 0)


async def test_json_body_of_objects_one_per_line_is_read_as_ndjson(relay: Relay) -> None:
    data = line() + b"\n" + line(make_event(sender="bad")) + line()
    status, answer, _ = await relay.post(data, **JSON)
    answer = orjson.loads(answer)
    assert (status, answer["accepted"], answer["dead_lettered"]) == (200, 2, 1)


# --- 3. dead letters keep the bytes sent ---------------------------------------------------


async def test_dead_letters_hold_the_array_elements_as_sent(relay: Relay) -> None:
    bad = orjson.dumps(make_event(sender="bad"))
    spelled = b'{ "z" : 1.50E2 , "a" : "\\u00e6,]" }'  # key order, spacing, escapes, a number
    deep = b'{"description": ' + b"[" * 300 + b"]" * 300 + b"}"  # deeper than orjson writes
    data = b"[\n  " + line().strip() + b" ,\n " + bad + b", " + spelled + b",\t" + deep + b"\n]"
    status, answer, _ = await relay.post(data, **JSON)
    answer = orjson.loads(answer)
    assert (status, answer["accepted"], answer["dead_lettered"]) == (200, 1, 3)
    assert [e["index"] for e in answer["errors"]] == [1, 2, 3]
    assert dead_letter_bodies(relay) == [bad, spelled, deep]


# --- 4. item bombs -------------------------------------------------------------------------


@pytest.mark.parametrize("array", [False, True])
async def test_more_items_than_the_limit_are_refused_whole(tmp_path: Path, array: bool) -> None:
    async with relay_with(tmp_path, max_items=50) as relay:
        events = [make_event() for _ in range(51)]
        data = orjson.dumps(events) if array else b"".join(map(line, events))
        status, answer, _ = await relay.post(data, **(JSON if array else NDJSON))
        assert status == 413
        assert b"items, over ingest.max_items_per_request (50)" in answer
        stats = relay.spool.stats()
        assert (stats.events, stats.dead_letters) == (0, 0)
        # blank lines are not items: 50 events among thousands of empty lines are fine
        data = b"\n \r\n".join(map(line, events[:50])) + b"\n" * 5000
        status, answer, _ = await relay.post(data, **NDJSON)
        assert (status, orjson.loads(answer)["accepted"]) == (200, 50)


async def test_errors_list_is_bounded(relay: Relay) -> None:
    data = b"".join(line(make_event(sender="bad")) for _ in range(250)) + line()
    status, answer, _ = await relay.post(data, **NDJSON)
    answer = orjson.loads(answer)
    assert (status, answer["accepted"], answer["dead_lettered"]) == (200, 1, 250)
    assert [e["index"] for e in answer["errors"]] == list(range(100))
    assert answer["errors_omitted"] == 150


async def test_junk_past_its_share_is_reported_not_kept(tmp_path: Path) -> None:
    # 10 % of 200 kB for invalid input: 400 junk lines of ~300 bytes cannot all be kept
    async with relay_with(tmp_path, max_bytes=200_000) as relay:
        data = b"".join(line(make_event(sender="bad")) for _ in range(400)) + line()
        status, answer, _ = await relay.post(data, **NDJSON)
        answer = orjson.loads(answer)
        assert (status, answer["accepted"]) == (200, 1)
        assert answer["not_kept"] > 0 and "its share of the spool" in answer["not_kept_reason"]
        assert answer["dead_lettered"] + answer["not_kept"] == 400
        assert len(dead_letter_bodies(relay)) == answer["dead_lettered"]
        # a valid event is still stored after the junk
        status, answer, _ = await relay.post(line(), **JSON)
        assert status == 200


def _peak_rss_reset() -> None:
    # writing 5 resets VmHWM (peak resident memory) to the current RSS (Linux >= 4.0)
    Path("/proc/self/clear_refs").write_text("5")


def _rss_kib(field: str) -> int:
    for row in Path("/proc/self/status").read_text().splitlines():
        if row.startswith(field + ":"):
            return int(row.split()[1])
    raise AssertionError(f"no {field}")


async def _healthz_latencies(
    relay: Relay, done: asyncio.Event, latencies: list[float] | None = None
) -> list[float]:
    """Poll /healthz until `done`: the time from each answer to the next. Client and relay share
    this event loop, so any time the loop is blocked shows as a long gap."""
    latencies = [] if latencies is None else latencies
    last = time.monotonic()
    while not done.is_set():
        async with relay.session.get(relay.url + "/healthz") as r:
            assert r.status == 200
        now = time.monotonic()
        latencies.append(now - last)
        last = now
        await asyncio.sleep(0.02)
    return latencies


async def test_tiny_body_inflating_to_millions_of_lines(tmp_path: Path) -> None:
    bomb = gzip.compress(b"{}\n" * 3_000_000, 9)  # 9 MB of lines in about 10 KiB
    assert len(bomb) < 64 * 1024
    async with relay_with(tmp_path, max_body_bytes=10 << 20) as relay:
        _peak_rss_reset()
        before = _rss_kib("VmRSS")
        done = asyncio.Event()
        polling = asyncio.create_task(_healthz_latencies(relay, done))
        began = time.monotonic()
        status, answer, _ = await relay.post(bomb, **NDJSON, **GZIP)
        took = time.monotonic() - began
        done.set()
        latencies = await polling
        growth_mib = (_rss_kib("VmHWM") - before) / 1024
        assert status == 413
        assert len(answer) < 300 and b"more than 10000 items" in answer
        assert took < 2.0
        assert max(latencies, default=0) < 1.0
        assert growth_mib < 150, growth_mib
        stats = relay.spool.stats()
        assert (stats.events, stats.dead_letters) == (0, 0)


# --- 5. the event loop stays responsive --------------------------------------------------


# about 8 s of CPU, and a bound on latency that a loaded machine can break: with the slow tests
@pytest.mark.e2e
async def test_healthz_answers_while_a_10_mib_body_is_parsed(tmp_path: Path) -> None:
    # many small items, most of them invalid: the costliest 10 MiB to decode, check and answer
    async with relay_with(tmp_path, max_body_bytes=10 << 20, max_items=300_000) as relay:
        data = b"".join(line() for _ in range(2_000))
        data += b'{"status": "LEVERT", "pad": "%s"}\n' % (b"p" * 14) * 200_000
        assert 9 << 20 < len(data) < 10 << 20
        done = asyncio.Event()
        latencies: list[float] = []
        polling = asyncio.create_task(_healthz_latencies(relay, done, latencies))
        await eventually(lambda: latencies, what="/healthz polled before the body arrives")
        status, answer, _ = await relay.post(data, **NDJSON)
        done.set()
        await polling
        assert len(latencies) >= 3
        assert max(latencies) < 1.0, max(latencies)
        assert status == 200 and len(answer) < 20_000
        answer = orjson.loads(answer)
        assert (answer["accepted"], answer["dead_lettered"]) == (2_000, 200_000)
        assert (len(answer["errors"]), answer["errors_omitted"]) == (100, 199_900)


# --- 6. slow and idle clients --------------------------------------------------------------


STALLED_REQUEST = (
    b"POST /api/status HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
    b"Content-Length: 1000\r\n\r\n"
    b'{"status":'
)


async def _open(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def test_stalled_bodies_are_answered_408_and_closed(tmp_path: Path) -> None:
    async with relay_with(tmp_path, read_timeout=1.0) as relay:
        stalled = [await _open(relay.url) for _ in range(300)]
        for _, writer in stalled:
            writer.write(STALLED_REQUEST)
        await asyncio.gather(*(w.drain() for _, w in stalled))
        began = time.monotonic()
        # a normal producer is served at once meanwhile
        status, _, _ = await relay.post(line(), **NDJSON)
        assert status == 200 and time.monotonic() - began < 0.5
        async with asyncio.timeout(10):  # all of them answered and closed within 10 s
            # read() returns what the server sent once it closed the connection
            answers = await asyncio.gather(*(reader.read() for reader, _ in stalled))
        for _, writer in stalled:
            writer.close()
        assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), answers[0]
        assert b"ingest.http.read_timeout" in answers[0]
        assert relay.spool.stats().events == 1


async def test_idle_connections_close_after_keepalive_timeout(tmp_path: Path) -> None:
    async with relay_with(tmp_path, keepalive_timeout=0.5) as relay:
        silent_reader, silent = await _open(relay.url)  # never sends a request
        reader, writer = await _open(relay.url)
        event = orjson.dumps(make_event())
        writer.write(
            b"POST /api/status HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(event), event)
        )
        async with asyncio.timeout(5):  # both closed by the server within 5 s
            answer = await reader.read()  # what the server sent before it closed
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert await silent_reader.read() == b""
        writer.close()
        silent.close()


async def test_connections_beyond_the_limit_wait_their_turn(tmp_path: Path) -> None:
    async with relay_with(tmp_path, max_connections=5) as relay:
        held = [await _open(relay.url) for _ in range(5)]
        for _, writer in held:
            writer.write(STALLED_REQUEST)
            await writer.drain()
        producer = asyncio.create_task(relay.post(line(), **NDJSON))
        done, _ = await asyncio.wait([producer], timeout=0.5)
        assert not done, "a sixth connection was served while five were open"
        held[0][1].transport.abort()  # one slot frees: the producer is served
        status, _, _ = await asyncio.wait_for(producer, timeout=5)
        assert status == 200
        for _, writer in held[1:]:
            writer.close()


# --- 7. garbage in Authorization -----------------------------------------------------------


@pytest.mark.parametrize("value", [b"Bearer \xff\xfe\xfd", b"Bearer s3cr\xe9t", b"\x80\x81"])
async def test_authorization_that_is_not_utf8_is_a_401(tmp_path: Path, value: bytes) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    async with relay_with(tmp_path, auth_token_file=str(token_file)) as relay:
        reader, writer = await _open(relay.url)
        event = orjson.dumps(make_event())
        writer.write(
            b"POST /api/status HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n"
            b"Authorization: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (value, len(event), event)
        )
        answer = await asyncio.wait_for(reader.read(), 5)  # all it sent, once it closed
        writer.close()
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
        assert relay.spool.stats().events == 0
