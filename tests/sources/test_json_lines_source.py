"""The JSON-lines (Logstash TCP) source on a real port, with a real spool behind it."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from relay.config import JsonLinesIngestConfig
from relay.errors import UserError
from relay.sources.intake import Intake
from relay.sources.json_lines import JsonLinesSource, start_json_lines
from relay.spool import SqliteSpool, list_dead_letters
from tests.helpers import make_event

MAX_EVENT = 4096


class Relay:
    def __init__(self, spool: SqliteSpool, intake: Intake, source: JsonLinesSource) -> None:
        self.spool, self.intake, self.source = spool, intake, source
        self.seen: list[dict] = []

    async def collect(self, count: int, timeout: float = 10.0, ack: bool = False) -> list[dict]:
        """Lease until `count` events have been seen; ack them when asked (frees space)."""
        deadline = time.monotonic() + timeout
        while len(self.seen) < count:
            leased = await self.spool.lease(1000)
            self.seen += [orjson.loads(item.body) for item in leased]
            if ack and leased:
                await self.spool.ack([item.id for item in leased])
            if len(self.seen) >= count:
                break
            assert time.monotonic() < deadline, f"only {len(self.seen)} of {count} events arrived"
            await asyncio.sleep(0.02)
        return self.seen

    def counted(self, reason: str) -> float:
        m = self.intake.metrics
        counter = m.skipped if reason == "not_status" else m.rejected
        return counter.labels("json_lines", reason)._value.get()

    async def wait_counted(self, reason: str, value: float) -> None:
        """Counters move when `submit` returns, which may be just after a lease sees the events."""
        deadline = time.monotonic() + 5
        while self.counted(reason) != value:
            assert time.monotonic() < deadline, f"{reason}: {self.counted(reason)} != {value}"
            await asyncio.sleep(0.01)

    async def send(self, data: bytes) -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", self.source.port)
        writer.write(data)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def close(self) -> None:
        await self.source.close()
        await self.spool.close()


async def open_relay(tmp_path: Path, max_bytes: int = 1 << 30) -> Relay:
    spool = await SqliteSpool.open(tmp_path / "spool", max_bytes=max_bytes, dedup_window=3600)
    intake = Intake(spool, MAX_EVENT)
    cfg = JsonLinesIngestConfig(tcp_listen="127.0.0.1:0")
    return Relay(spool, intake, await start_json_lines(cfg, intake, MAX_EVENT))


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[Relay]:
    r = await open_relay(tmp_path)
    yield r
    await r.close()


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
    await relay.send(lines(*sent))
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
    await relay.send(lines(other, logstash("org.springframework.web"), bare))
    assert ids(await relay.collect(1)) == {bare["message_id"]}
    # skipped before validation: a logger_name that validation refuses never makes them dead
    # letters (they precede the event, so they are counted by the time it is stored)
    await relay.wait_counted("not_status", 2)
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
    await relay.send(b"\n".join(bad) + b"\r\n" + lines(good))
    assert ids(await relay.collect(1)) == {good["message_id"]}
    letters = list_dead_letters(tmp_path / "spool")
    assert [d.body for d in letters] == bad
    assert {(d.source, d.reason) for d in letters} == {("json_lines", "invalid")}
    errors = [d.last_error for d in letters]
    assert "line is not valid JSON" in errors[0]
    assert "NOPE" in errors[1]
    assert "JSON object" in errors[2]
    assert "logger_name must be a string" in errors[3]
    await relay.wait_counted("invalid", 5)


async def test_oversized_lines(relay: Relay, tmp_path: Path) -> None:
    trace = logstash("no.difi.Foo", level="ERROR", stack_trace="at x.y.Z\n" * 20_000)
    huge_status = logstash(description="d" * 20_000)
    good = logstash()
    await relay.send(lines(trace, huge_status, good))
    assert ids(await relay.collect(1)) == {good["message_id"]}
    letters = list_dead_letters(tmp_path / "spool")
    assert [(d.reason, len(d.body)) for d in letters] == [("too_large", 1024)]
    assert relay.counted("not_status") == 1  # the stack trace of another logger
    await relay.wait_counted("too_large", 1)


async def test_last_line_without_newline_at_eof_is_stored(relay: Relay) -> None:
    line = logstash()
    await relay.send(orjson.dumps(line))
    assert ids(await relay.collect(1)) == {line["message_id"]}


async def test_tiny_spool_loses_nothing(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, "relay.sources")
    r = await open_relay(tmp_path, max_bytes=6000)
    sent = [logstash() for _ in range(15)]
    await r.send(lines(*sent))
    assert ids(await r.collect(15, timeout=20, ack=True)) == ids(sent)
    assert len([m for m in caplog.messages if "json_lines: the spool refuses" in m]) == 1
    await r.close()


async def test_listen_failure_names_the_setting(tmp_path: Path) -> None:
    spool = await SqliteSpool.open(tmp_path / "spool", max_bytes=1 << 20, dedup_window=0)
    intake = Intake(spool, MAX_EVENT)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cfg = JsonLinesIngestConfig(tcp_listen=f"127.0.0.1:{busy.getsockname()[1]}")
        with pytest.raises(UserError, match=r"ingest\.json_lines\.tcp_listen"):
            await start_json_lines(cfg, intake, MAX_EVENT)
    off = await start_json_lines(JsonLinesIngestConfig(), intake, MAX_EVENT)
    assert off.port is None
    await off.close()
    await spool.close()
