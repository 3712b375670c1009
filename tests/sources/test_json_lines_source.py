"""The JSON-lines (Logstash TCP) source on a real port, with a real spool behind it."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest

from relay.config import JsonLinesIngestConfig
from relay.errors import UserError
from relay.sources.json_lines import start_json_lines
from relay.spool import list_dead_letters
from tests.helpers import InProcessRelay as Relay
from tests.helpers import eventually, inprocess_relay, make_event

SOURCE = "json_lines"


@asynccontextmanager
async def json_lines_relay(tmp_path: Path, **spool) -> AsyncIterator[Relay]:
    async with inprocess_relay(tmp_path, **spool) as r:
        await r.start_json_lines()
        yield r


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[Relay]:
    async with json_lines_relay(tmp_path) as r:
        yield r


async def send(relay: Relay, data: bytes) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", relay.json_lines.port)
    writer.write(data)
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def counted(relay: Relay, reason: str, value: int) -> None:
    """Counters move when `submit` returns, which may be just after a lease sees the events."""
    count = relay.skipped if reason == "not_status" else relay.rejected
    await eventually(lambda: count(SOURCE, reason) == value, 5, f"{value} {reason}")


def logstash(logger: str = "STATUS", **fields: object) -> dict:
    """A line as the integrasjonspunkt's logstash-logback-encoder writes it."""
    line = {
        "@timestamp": "2024-05-01T10:00:00.123+02:00",
        "@version": "1",
        "message": "Message status LEVERT",
        "logger_name": logger,
        "thread_name": "http-nio-9093-exec-4",
        "level": "INFO",
        "level_value": 20000,
        "HOSTNAME": "ip-01",
        "appname": "integrasjonspunkt",
    }
    if logger == "STATUS":
        line.update(make_event())
        line["@timestamp"] = "2024-05-01T10:00:00.123+02:00"
    line.update(fields)
    return line


def lines(*values: dict) -> bytes:
    return b"".join(orjson.dumps(v) + b"\n" for v in values)


def ids(events: list[dict]) -> set[str]:
    return {e["message_id"] for e in events}


async def test_logstash_status_lines_land_with_their_fields(relay: Relay) -> None:
    sent = [logstash() for _ in range(3)]
    await send(relay, lines(*sent))
    got = {e["message_id"]: e for e in await relay.collect(3)}
    for line in sent:
        stored = got[line["message_id"]]
        for key in ("@version", "level", "level_value", "thread_name", "message", "HOSTNAME"):
            assert stored[key] == line[key]
        assert stored["appname"] == "integrasjonspunkt"
        assert stored["logger_name"] == "STATUS"


async def test_other_loggers_are_skipped_and_counted(relay: Relay) -> None:
    other = logstash("no.difi.meldingsutveksling.NextMoveQueue", message="polling")
    bare = make_event()  # no logger_name: a status event
    await send(relay, lines(other, logstash("org.springframework.web"), bare))
    assert ids(await relay.collect(1)) == {bare["message_id"]}
    # skipped before validation: a logger_name that validation refuses never makes them dead
    # letters (they precede the event, so they are counted by the time it is stored)
    await counted(relay, "not_status", 2)
    assert (relay.spool.stats().events, relay.spool.stats().dead_letters) == (1, 0)


async def test_invalid_lines_are_dead_lettered_and_the_connection_goes_on(
    relay: Relay, tmp_path: Path
) -> None:
    good = logstash()
    bad = [
        b'{"status": "LEVERT", broken',
        orjson.dumps(logstash(status="NOPE")),
        b"[1, 2, 3]",
        orjson.dumps(logstash(logger_name=5)),
        b"<13>May  1 10:00:00 host app: this is syslog",
    ]
    await send(relay, b"\n".join(bad) + b"\r\n" + lines(good))
    assert ids(await relay.collect(1)) == {good["message_id"]}
    letters = list_dead_letters(tmp_path / "spool")
    assert [d.body for d in letters] == bad
    assert {(d.source, d.reason) for d in letters} == {("json_lines", "invalid")}
    errors = [d.last_error for d in letters]
    assert "line is not valid JSON" in errors[0]
    assert "NOPE" in errors[1]
    assert "JSON object" in errors[2]
    assert "logger_name must be a string" in errors[3]
    await counted(relay, "invalid", 5)


async def test_oversized_lines(relay: Relay, tmp_path: Path) -> None:
    trace = logstash("no.difi.Foo", level="ERROR", stack_trace="at x.y.Z\n" * 20_000)
    huge_status = logstash(description="d" * 20_000)
    good = logstash()
    await send(relay, lines(trace, huge_status, good))
    assert ids(await relay.collect(1)) == {good["message_id"]}
    letters = list_dead_letters(tmp_path / "spool")
    assert [(d.reason, len(d.body)) for d in letters] == [("too_large", 1024)]
    assert relay.skipped(SOURCE, "not_status") == 1  # the stack trace of another logger
    await counted(relay, "too_large", 1)


async def test_last_line_without_newline_at_eof_is_stored(relay: Relay) -> None:
    line = logstash()
    await send(relay, orjson.dumps(line))
    assert ids(await relay.collect(1)) == {line["message_id"]}


async def test_tiny_spool_loses_nothing(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, "relay.sources")
    async with json_lines_relay(tmp_path, max_bytes=6000) as r:
        sent = [logstash() for _ in range(15)]
        await send(r, lines(*sent))
        assert ids(await r.collect(15, timeout=20, ack=True)) == ids(sent)
        assert len([m for m in caplog.messages if "json_lines: the spool refuses" in m]) == 1


async def test_listen_failure_names_the_setting(tmp_path: Path) -> None:
    async with inprocess_relay(tmp_path) as relay:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            cfg = JsonLinesIngestConfig(tcp_listen=f"127.0.0.1:{busy.getsockname()[1]}")
            with pytest.raises(UserError, match=r"ingest\.json_lines\.tcp_listen"):
                await start_json_lines(cfg, relay.intake)
        off = await start_json_lines(JsonLinesIngestConfig(), relay.intake)
        assert off.port is None
        await off.close()


async def test_oversized_event_names_the_setting(relay: Relay, tmp_path: Path) -> None:
    good = logstash()
    await send(relay, lines(logstash(description="d" * 5000), good))
    assert ids(await relay.collect(1)) == {good["message_id"]}
    [letter] = list_dead_letters(tmp_path / "spool")
    assert "over the limit of 4096 (ingest.max_event_bytes)" in letter.last_error
