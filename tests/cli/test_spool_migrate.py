"""`relay spool migrate` in-process: the waiting events of a SQLite spool moved into the
configured spool (another SQLite spool; a jetstream spool on a real 3-node cluster), exactly once
and in order, and its one-line errors."""

from __future__ import annotations

import asyncio
import importlib.util
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import nats
import nats.errors
import pytest

from relay.cli import main
from relay.config import load_config, spool_options
from relay.spool import (
    Incoming,
    Reject,
    Release,
    Spool,
    SpoolFull,
    SqliteSpool,
    open_spool,
)
from relay.spool.migrate import MigrationStopped, migrate
from tests.helpers import wait_until
from tests.helpers.nats import NatsCluster

GiB = 1 << 30


def ev(n: int, source: str = "http", pad: int = 0) -> Incoming:
    return Incoming(f'{{"n":{n},"pad":"{"x" * pad}"}}'.encode(), source)


async def fill(path: Path, events: list[Incoming], rejects: Sequence[Reject] = ()) -> None:
    spool = await SqliteSpool.open(path, max_bytes=GiB, dedup_window=0)
    try:
        for start in range(0, len(events), 100):
            await spool.append(events[start : start + 100])
        if rejects:
            await spool.append([], rejects)
    finally:
        await spool.close()


async def drain(spool: Spool, wait: float = 0.0) -> list[Incoming]:
    """Everything waiting in `spool`, in the order it hands it out, acked. `wait`: for a spool
    that fetches from elsewhere (jetstream), how long an empty lease waits before it is the end."""
    out: list[Incoming] = []
    while items := await spool.lease(500, wait=wait):
        out += [Incoming(item.body, item.source) for item in items]
        await spool.ack([item.id for item in items])
    return out


async def content(path: Path) -> tuple[list[Incoming], int]:
    """(the events, the number of dead letters) of the SQLite spool in `path`, emptied."""
    spool = await SqliteSpool.open(path, max_bytes=GiB, dedup_window=0)
    try:
        dead = spool.stats().dead_letters
        return await drain(spool), dead
    finally:
        await spool.close()


def sqlite_config(tmp_path: Path, target: Path) -> Path:
    config = tmp_path / "relay.toml"
    config.write_text(f'[spool]\nbackend = "sqlite"\npath = "{target}"\n')
    return config


def run(*argv: str) -> int:
    return main(["spool", "migrate", *argv])


def test_sqlite_to_sqlite_moves_every_event_once_and_in_order(tmp_path: Path, capsys) -> None:
    source, target = tmp_path / "old", tmp_path / "new"
    events = [ev(i, source=("http", "syslog", "rsocket")[i % 3]) for i in range(1234)]
    asyncio.run(fill(source, events, [Reject("junk", "not JSON", "tcp")]))
    config = sqlite_config(tmp_path, target)

    assert run("--from", "sqlite", "--from-path", str(source), "--config", str(config)) == 0
    out, _ = capsys.readouterr()
    assert out.strip() == (
        f"moved 1234 event(s) from sqlite spool {source} to sqlite "
        f"(dead letters stay in {source}: relay dlq with that spool)"
    )
    # a second run finds nothing left
    assert run("--from", "sqlite", "--from-path", str(source), "--config", str(config)) == 0
    assert capsys.readouterr().out.startswith("moved 0 event(s) from sqlite spool")

    moved, dead_in_target = asyncio.run(content(target))
    assert moved == events and dead_in_target == 0
    left, dead_in_source = asyncio.run(content(source))
    assert left == [] and dead_in_source == 1


def test_events_waiting_for_a_retry_are_waited_for(tmp_path: Path, capsys) -> None:
    source, target = tmp_path / "old", tmp_path / "new"

    async def with_a_retry_pending() -> None:
        spool = await SqliteSpool.open(source, max_bytes=GiB, dedup_window=0)
        try:
            await spool.append([ev(1), ev(2), ev(3)])
            first, *_ = await spool.lease(1)
            await spool.release([Release(first.id, 1.0, "upstream down")])
        finally:
            await spool.close()

    asyncio.run(with_a_retry_pending())
    config = sqlite_config(tmp_path, target)
    assert run("--from", "sqlite", "--from-path", str(source), "--config", str(config)) == 0
    out, err = capsys.readouterr()
    assert out.startswith("moved 3 event(s)")
    assert err.strip() == (
        f"1 event(s) wait for their retry time in {source}; waiting for them "
        "(Ctrl-C stops; running this again continues)"
    )
    moved, _ = asyncio.run(content(target))
    assert sorted(e.body for e in moved) == sorted(ev(i).body for i in (1, 2, 3))


def test_a_spool_is_not_migrated_into_itself(tmp_path: Path, capsys) -> None:
    source = tmp_path / "spool"
    asyncio.run(fill(source, [ev(1)]))
    config = sqlite_config(tmp_path, source)
    assert run("--from", "sqlite", "--from-path", str(source), "--config", str(config)) == 2
    err = capsys.readouterr().err
    assert "cannot be migrated into itself" in err and len(err.strip().splitlines()) == 1
    assert asyncio.run(content(source))[0] == [ev(1)]


def test_a_missing_source_is_one_line_and_creates_nothing(tmp_path: Path, capsys) -> None:
    config = sqlite_config(tmp_path, tmp_path / "new")
    missing = tmp_path / "typo"
    assert run("--from", "sqlite", "--from-path", str(missing), "--config", str(config)) == 2
    err = capsys.readouterr().err
    assert f"no spool at {missing}" in err and len(err.strip().splitlines()) == 1
    assert not missing.exists() and not (tmp_path / "new").exists()


async def test_a_source_a_relay_runs_on_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    source = tmp_path / "old"
    config = sqlite_config(tmp_path, tmp_path / "new")
    running = await SqliteSpool.open(source, max_bytes=GiB, dedup_window=0)
    try:
        await running.append([ev(1)])
        argv = ["--from", "sqlite", "--from-path", str(source), "--config", str(config)]
        # the command runs its own event loop, as it does from a shell
        assert await asyncio.to_thread(run, *argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert str(source) in err
        assert running.stats().events == 1
    finally:
        await running.close()


async def test_a_full_target_stops_with_what_moved_and_a_rerun_continues(tmp_path: Path) -> None:
    source = tmp_path / "old"
    events = [ev(i, pad=3000) for i in range(10)]
    await fill(source, events)
    src = await SqliteSpool.open(source, max_bytes=GiB, dedup_window=0)
    small = await SqliteSpool.open(tmp_path / "small", max_bytes=20_000, dedup_window=3600)
    try:
        with pytest.raises(MigrationStopped) as caught:
            await migrate(src, small, batch=2)
        message = str(caught.value)
        assert message.startswith(f"moved {caught.value.moved} event(s), then the target")
        assert "run the same command again" in message and "\n" not in message
        assert 0 < caught.value.moved < 10
        assert src.stats().events == 10 - caught.value.moved
        with pytest.raises(SpoolFull):
            await small.append([ev(99, pad=3000)])
        # room again, and the source opened again (as a rerun does): the rest follows
        first = await drain(small)
        await src.close()
        src = await SqliteSpool.open(source, max_bytes=GiB, dedup_window=0)
        assert await migrate(src, small, batch=2) == 10 - caught.value.moved
        assert first + await drain(small) == events
    finally:
        await src.close()
        await small.close()


async def test_a_batch_stored_but_not_acked_is_stored_once_on_the_rerun(tmp_path: Path) -> None:
    # the crash between the target's append and the source's ack, replayed by hand
    await fill(tmp_path / "old", [ev(i) for i in range(5)])
    src = await SqliteSpool.open(tmp_path / "old", max_bytes=GiB, dedup_window=0)
    dst = await SqliteSpool.open(tmp_path / "new", max_bytes=GiB, dedup_window=3600)
    try:
        await dst.append([ev(0), ev(1)])  # stored by the run that died; the source still has them
        assert await migrate(src, dst) == 5
        assert await drain(dst) == [ev(i) for i in range(5)]
    finally:
        await src.close()
        await dst.close()


# -- into a jetstream spool ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    if importlib.util.find_spec("relay.spool.jetstream.spool") is None:
        pytest.skip("relay.spool.jetstream.spool is not there yet")
    with NatsCluster(tmp_path_factory.mktemp("nats")) as started:
        wait_until(
            lambda: asyncio.run(_creates_streams(started)),
            60,
            "the new cluster to create a replicated stream",
            started.output,
        )
        yield started


async def _creates_streams(cluster: NatsCluster) -> bool:
    """Right after a cluster forms, its first stream may time out (peers not all known yet)."""
    nc = await nats.connect(servers=cluster.urls)
    try:
        js = nc.jetstream(timeout=5)
        await js.add_stream(name="PROBE", subjects=["probe"], num_replicas=3)
        await js.delete_stream("PROBE")
        return True
    except nats.errors.Error:
        return False
    finally:
        await nc.close()


def jetstream_config(tmp_path: Path, cluster: NatsCluster) -> Path:
    name = f"M{uuid.uuid4().hex[:12].upper()}"
    servers = ", ".join(f'"{url}"' for url in cluster.urls)
    config = tmp_path / "relay.toml"
    config.write_text(
        f'[spool]\nbackend = "jetstream"\nmax_bytes = "50MB"\npath = "{tmp_path / "unused"}"\n'
        f'[spool.jetstream]\nservers = [{servers}]\nstream = "{name}"\n'
        f'subject = "m.{name.lower()}"\n'
    )
    return config


def test_sqlite_to_jetstream(tmp_path: Path, cluster: NatsCluster, capsys) -> None:
    source = tmp_path / "old"
    events = [ev(i, source=("http", "syslog")[i % 2]) for i in range(1100)]
    asyncio.run(fill(source, events, [Reject("junk", "not JSON", "tcp")]))
    config = jetstream_config(tmp_path, cluster)
    argv = ("--from", "sqlite", "--from-path", str(source), "--config", str(config))

    assert run(*argv) == 0
    assert capsys.readouterr().out.strip() == (
        f"moved 1100 event(s) from sqlite spool {source} to jetstream "
        f"(dead letters stay in {source}: relay dlq with that spool)"
    )
    assert run(*argv) == 0
    assert capsys.readouterr().out.startswith("moved 0 event(s)")

    async def in_jetstream() -> list[Incoming]:
        cfg = load_config(str(config))
        spool = await open_spool(
            "jetstream",
            cfg.spool.path,
            max_bytes=cfg.spool.max_bytes,
            dedup_window=cfg.spool.dedup_window,
            options=spool_options(cfg),
        )
        try:
            return await drain(spool, wait=2.0)
        finally:
            await spool.close()

    assert asyncio.run(in_jetstream()) == events
    left, dead = asyncio.run(content(source))
    assert left == [] and dead == 1
