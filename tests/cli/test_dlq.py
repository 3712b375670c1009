"""`relay dlq` and `relay spool` in-process against a real SQLite spool: replay of what ingest kept
(JSON and whole syslog frames), purge, and one-line errors from the admin side."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from relay import event
from relay.cli import main
from relay.spool import Incoming, Reject, SqliteSpool
from tests.helpers import make_event


def _fill(path: Path, events: list[Incoming], rejects: list[Reject]) -> None:
    async def fill() -> None:
        spool = await SqliteSpool.open(path, max_bytes=1 << 30, dedup_window=0)
        await spool.append(events, rejects)
        await spool.close()

    asyncio.run(fill())


def test_replay_finds_the_event_in_a_syslog_frame(tmp_path: Path, monkeypatch, capsys) -> None:
    path = tmp_path / "spool"
    ev = make_event()
    frame = b"<14>1 2026-01-01T00:00:00Z host app - - - " + orjson.dumps(ev)
    _fill(
        path,
        [],
        [
            Reject(frame.decode(), "refused upstream", "syslog"),
            Reject("not an event at all", "not JSON", "http"),
        ],
    )
    monkeypatch.setenv("RELAY_SPOOL__PATH", str(path))
    assert main(["dlq", "replay", "--all"]) == 0
    out, err = capsys.readouterr()
    assert "replayed 1 dead letter(s)" in out
    assert "dead letter 2 left in place" in err and len(err.splitlines()) == 1

    assert main(["spool", "stats", "--json"]) == 0
    stats = orjson.loads(capsys.readouterr().out)
    assert (stats["depth"], stats["dead_letters"]) == (1, 1)
    assert stats["sources"]["syslog"]["events"] == 1

    async def leased() -> bytes:
        spool = await SqliteSpool.open(path, max_bytes=1 << 30, dedup_window=0)
        try:
            [item] = await spool.lease(10)
            return item.body
        finally:
            await spool.close()

    # queued as ingest would have stored it: the normalised event, without the syslog header
    assert asyncio.run(leased()) == event.encode(event.normalise(ev))


def test_list_and_purge(tmp_path: Path, monkeypatch, capsys) -> None:
    path = tmp_path / "spool"
    _fill(path, [], [Reject("junk", "not JSON", "http")])
    monkeypatch.setenv("RELAY_SPOOL__PATH", str(path))
    assert main(["dlq", "list", "--json"]) == 0
    [record] = orjson.loads(capsys.readouterr().out)
    assert (record["event"], record["source"], record["event_id"]) == ("junk", "http", None)
    assert main(["dlq", "purge", "--older-than", "1h"]) == 0
    assert "purged 0 dead letter(s)" in capsys.readouterr().out
    assert main(["dlq", "list"]) == 0
    assert "junk" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("env", "args", "expected"),
    [
        ({}, ["dlq", "list"], "no spool at"),
        ({}, ["spool", "salvage", "quarantine/nothing"], "cannot salvage"),
        ({"RELAY_SPOOL__BACKEND": "memory"}, ["spool", "stats"], "keeps nothing outside"),
        ({"RELAY_SPOOL__BACKEND": "nats"}, ["dlq", "list"], 'must be one of "sqlite", "memory"'),
    ],
)
def test_admin_errors_are_one_line(
    tmp_path: Path, monkeypatch, capsys, env: dict[str, str], args: list[str], expected: str
) -> None:
    monkeypatch.setenv("RELAY_SPOOL__PATH", str(tmp_path / "none"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("relay: error: ") and len(err.strip().splitlines()) == 1, err
    assert expected in err
