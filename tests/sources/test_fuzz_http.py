"""Input hardening of the HTTP source: arbitrary bytes, truncated compression, deep nesting, NUL
bytes, invalid UTF-8. The relay answers with an error and keeps serving, memory stays bounded,
and nothing invalid reaches the spool's main queue."""

from __future__ import annotations

import contextlib
import gzip
import random
import zlib
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay import event
from relay.sources import body, json_items
from relay.spool import SqliteSpool
from tests.helpers import RelayProcess, inprocess_relay, make_event, post

CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/x-ndjson",
        "application/jsonlines",
        "",
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
        "application/json; charset=latin-1",
        "multipart/form-data; boundary=x",
    ]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=4096), ctype=CONTENT_TYPES)
def test_split_raises_only_body_errors(data: bytes, ctype: str) -> None:
    try:
        single, items = body.split(data, ctype)
    except body.BodyError as exc:
        assert exc.status in (400, 415)
        return
    assert items and (not single or len(items) == 1)
    for item in items:
        assert (item.error is None) or (item.value is None)
        with contextlib.suppress(event.EventError):
            event.encode(event.normalise(item.value))


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=2048),
    encoding=st.sampled_from(["gzip", "deflate", "x-gzip", "br", "identity", ""]),
)
def test_decompress_raises_only_body_errors(data: bytes, encoding: str) -> None:
    try:
        out = body.decompress(data, encoding, 10_000)
    except body.BodyError as exc:
        assert exc.status in (400, 413, 415)
        return
    assert len(out) <= max(10_000, len(data))


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)
SPACE = st.sampled_from(["", " ", "\n", "\t ", "\r\n"])


SLICED_INPUTS = {
    "elements": st.lists(JSON_VALUES, min_size=1, max_size=8),
    "spaces": st.lists(SPACE, min_size=9),
}


@settings(max_examples=50, deadline=None)
@given(**SLICED_INPUTS)
def test_array_elements_are_sliced_exactly(elements: list, spaces: list[str]) -> None:
    _sliced_exactly(elements, spaces)


# the same at length: 300 examples take about 8 s of CPU, so `make test` runs them (with the
# slow tests) and `make test-fast` the 50 above
@pytest.mark.e2e
@settings(max_examples=300, deadline=None)
@given(**SLICED_INPUTS)
def test_array_elements_are_sliced_exactly_at_length(elements: list, spaces: list[str]) -> None:
    _sliced_exactly(elements, spaces)


def _sliced_exactly(elements: list, spaces: list[str]) -> None:
    encoded = [orjson.dumps(e) for e in elements]
    gaps = [s.encode() for s in spaces]
    data = (
        gaps[0]
        + b"["
        + b",".join(g + e + g for g, e in zip(gaps[1:], encoded, strict=False))
        + b"]"
    )
    assert orjson.loads(data) == elements
    assert json_items.array_elements(data) == encoded


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.binary(max_size=300), min_size=1, max_size=5))
def test_every_gzip_member_is_inflated(parts: list[bytes]) -> None:
    data = b"".join(gzip.compress(p) for p in parts)
    assert body.decompress(data, "gzip", 10_000) == b"".join(parts)


def test_decompression_is_bounded() -> None:
    bomb = zlib.compress(b"\0" * (50 << 20), 9)
    try:
        body.decompress(bomb, "deflate", 1 << 20)
    except body.BodyError as exc:
        assert exc.status == 413
    else:
        raise AssertionError("a 50 MiB bomb was inflated")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _garbage(rng: random.Random) -> tuple[bytes, dict[str, str]]:
    valid = orjson.dumps(make_event())
    kind = rng.randrange(10)
    headers = {"Content-Type": rng.choice(["application/json", "application/x-ndjson", ""])}
    if kind == 0:
        data = rng.randbytes(rng.randrange(1, 5000))
    elif kind == 1:
        data = b"[" * rng.randrange(100, 200_000)  # deep nesting
    elif kind == 2:
        data = valid[: rng.randrange(1, len(valid))]  # truncated JSON
    elif kind == 3:
        data = gzip.compress(valid)[: rng.randrange(1, 30)]
        headers["Content-Encoding"] = "gzip"
    elif kind == 4:
        data = valid.replace(b'"LEVERT"', b'"LEV\x00ERT"')
    elif kind == 5:
        data = valid.replace(b"LEVERT", b"LEV\xff\xfeRT")  # invalid UTF-8
    elif kind == 6:
        data = b"\n".join(rng.randbytes(rng.randrange(1, 200)) for _ in range(50))
        headers["Content-Type"] = "application/x-ndjson"
    elif kind == 7:
        data = orjson.dumps([make_event(sender=rng.randbytes(8).hex()) for _ in range(20)])
    elif kind == 8:
        data = b'{"a":' * 5000 + b"1" + b"}" * 5000
    else:
        data = b"\x00" * rng.randrange(1, 10_000)
    return data, headers


async def test_garbage_is_answered_and_only_valid_events_are_stored(tmp_path: Path) -> None:
    """The fast form of the test below, in this process: every kind of garbage, with a valid
    event every tenth request; exactly the valid ones reach the main queue."""
    rng = random.Random(5)
    statuses: set[int] = set()
    valid: list[bytes] = []
    async with inprocess_relay(tmp_path, dedup_window=0) as relay:
        await relay.start_http(max_body_bytes=64 << 10)  # the deepest nesting is over it
        for i in range(200):
            if i % 10 == 0:
                valid.append(event.encode(event.normalise(make_event())))
                status, _, _ = await relay.post(valid[-1], **{"Content-Type": "application/json"})
                assert status == 200
                continue
            data, headers = _garbage(rng)
            status, _, _ = await relay.post(data, **headers)
            statuses.add(status)
        async with relay.session.get(relay.url + "/healthz") as answer:
            assert answer.status == 200
        stored = [item.body for item in await relay.spool.lease(100_000)]
        assert relay.spool.stats().dead_letters > 0  # some garbage was valid JSON, kept aside
    assert statuses <= {200, 400, 413, 415}, statuses
    assert statuses >= {200, 400, 413}  # the garbage is varied enough to meet every answer
    assert sorted(stored) == sorted(valid)


@pytest.mark.e2e  # a relay subprocess and 1500 requests
def test_relay_survives_garbage_and_stores_only_valid_events(tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    relay = RelayProcess(tmp_path / "spool").start()
    rng = random.Random(5)
    statuses: set[int] = set()
    valid: list[bytes] = []  # a valid event every 50th request: exactly these must be stored
    try:
        rss_before = None
        for i in range(1500):
            if i == 200:
                rss_before = _rss_kib(relay.proc.pid)
            if i % 50 == 0:
                valid.append(event.encode(event.normalise(make_event())))
                assert post(relay.url, orjson.loads(valid[-1]))[0] == 200
                continue
            data, headers = _garbage(rng)
            req = urllib.request.Request(relay.url + "/api/status", data=data, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    statuses.add(r.status)
            except urllib.error.HTTPError as e:
                statuses.add(e.code)
        rss_after = _rss_kib(relay.proc.pid)
        with urllib.request.urlopen(relay.url + "/healthz", timeout=5) as r:
            assert r.status == 200
    finally:
        relay.kill()
    assert statuses <= {200, 400, 413, 415}, statuses
    assert rss_after - rss_before < 64 * 1024, (rss_before, rss_after)

    import asyncio

    async def queued() -> list[bytes]:
        spool = await SqliteSpool.open(tmp_path / "spool", max_bytes=1 << 30, dedup_window=0)
        items = await spool.lease(100_000)
        await spool.close()
        return [i.body for i in items]

    assert sorted(asyncio.run(queued())) == sorted(valid)
