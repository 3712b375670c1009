"""RELP's `rsp 200` comes only after the spool's fsync: the relay runs with the fsync-recording
shim preloaded (tests/e2e/fsync_trace.py, as the HTTP crash test does), and every answer must have
a completed fsync of the spool between its frame being sent and its answer arriving. The checker
is shown to catch a relay whose fsync does nothing, and a disk that never confirms a write gets
no answer at all."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from tests.e2e.fsync_trace import Ack, build_shim, ordering_violations, read_trace, shim_env
from tests.helpers import RelayProcess, make_event
from tests.helpers.relp import RelpClient

pytestmark = pytest.mark.e2e

FRAMES = 300
RELP_ENV = {"RELAY_INGEST__RELP__LISTEN": "127.0.0.1:0"}


@pytest.fixture(scope="module")
def fsync_shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    shim, why_not = build_shim(tmp_path_factory.mktemp("shim"))
    if shim is None:
        pytest.skip(why_not)
    return shim


def message(event: dict) -> bytes:
    return b"<13>2024-05-01T10:00:00+00:00 host eformidling-status: " + orjson.dumps(event)


async def stream(port: int) -> list[Ack]:
    """FRAMES events in windows of 1 to 20 frames; one Ack (send, answer) per frame."""
    client = await RelpClient.connect(port)
    acks: list[Ack] = []
    sent = 0
    window = 1
    while sent < FRAMES:
        events = [make_event() for _ in range(min(window, FRAMES - sent))]
        started = time.monotonic()
        numbers = client.syslog(*(message(e) for e in events))
        for number, event in zip(numbers, events, strict=True):
            answer = await client.answer(number)
            assert answer.data == b"200 OK", answer
            acks.append(Ack(started, time.monotonic(), event["message_id"], 1, "200 OK"))
        sent += len(events)
        window = window % 20 + 1
    await client.close()
    return acks


async def test_every_relp_answer_follows_an_fsync(tmp_path: Path, fsync_shim: Path) -> None:
    spool, trace = tmp_path / "spool", tmp_path / "fsync.trace"
    relay = RelayProcess(spool, env={**RELP_ENV, **shim_env(fsync_shim, trace)}).start()
    try:
        acks = await stream(relay.listening("relp"))
        with urllib.request.urlopen(relay.url + "/metrics", timeout=5) as r:
            metrics = r.read().decode()
    finally:
        relay.kill()
    assert f'relay_received_events_total{{source="relp"}} {float(FRAMES)}' in metrics
    assert 'relay_tcp_connections{source="relp"}' in metrics
    loaded, syncs = read_trace(trace)
    assert any(line.endswith(" real") for line in loaded), "the shim was not loaded"
    late = ordering_violations(acks, syncs, spool)
    assert not late, f"{len(late)} of {len(acks)} answers came before fsync: {late[:3]}"


async def test_the_checker_catches_answers_without_fsync(tmp_path: Path, fsync_shim: Path) -> None:
    spool, trace = tmp_path / "spool", tmp_path / "fsync.trace"
    relay = RelayProcess(spool, env={**RELP_ENV, **shim_env(fsync_shim, trace, noop=True)})
    relay.start()
    try:
        acks = await stream(relay.listening("relp"))
    finally:
        relay.kill()
    loaded, syncs = read_trace(trace)
    assert any(line.endswith(" noop") for line in loaded), "the shim was not loaded"
    assert len(ordering_violations(acks, syncs, spool)) == len(acks)


async def test_no_answer_while_the_disk_does_not_confirm(tmp_path: Path, fsync_shim: Path) -> None:
    spool, trace, hang = tmp_path / "spool", tmp_path / "fsync.trace", tmp_path / "hang"
    env = {**RELP_ENV, **shim_env(fsync_shim, trace), "FSYNC_SHIM_HANG": str(hang)}
    relay = RelayProcess(spool, env=env).start()
    event = make_event()
    try:
        client = await RelpClient.connect(relay.listening("relp"))
        hang.touch()  # from now on fsync never returns
        sent = time.monotonic()
        client.syslog(message(event))
        # a fixed wait on purpose: it measures an absence (no answer while fsync hangs)
        with pytest.raises(TimeoutError):
            await client.next_frame(timeout=1.5)
    finally:
        relay.kill()
    hang.unlink()
    # as librelp does: reconnect to the restarted relay and send the unanswered frame again
    relay.env["RELAY_INGEST__RELP__LISTEN"] = f"127.0.0.1:{relay.listening('relp')}"
    relay.start()
    try:
        client = await RelpClient.connect(relay.listening("relp"))
        [number] = client.syslog(message(event))
        assert (await client.answer(number)).data == b"200 OK"
        ack = Ack(sent, time.monotonic(), event["message_id"], 2, "200 OK", True)
        await client.close()
    finally:
        relay.kill()
    assert not ordering_violations([ack], read_trace(trace)[1], spool)
