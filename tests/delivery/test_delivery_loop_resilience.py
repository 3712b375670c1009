"""The delivery loop against a scripted sink and the real spool: it never hammers an upstream
that refuses everything, never dead-letters before it knows the upstream accepts events, finds an
event that kills the connection, and never leaves an event leased."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from relay import supervision
from relay.config import RetryConfig, UpstreamConfig
from relay.delivery.loop import Delivery
from relay.delivery.sink import DELIVERED, Outcome, Verdict
from relay.spool import Incoming, SpoolUnavailable
from relay.spool.sqlite import SqliteSpool

Answer = Callable[[list[bytes]], Outcome]


class ScriptedSink:
    """A sink whose answers a test scripts; it records when each request was made."""

    connected = True
    down_since = None

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.sent: list[tuple[float, list[bytes]]] = []

    async def start(self) -> None:
        pass

    async def wait_ready(self) -> None:
        pass

    async def send(self, bodies: list[bytes]) -> Outcome:
        self.sent.append((time.monotonic(), bodies))
        await asyncio.sleep(0)
        return self.answer(bodies)

    def not_ready(self) -> str | None:
        return None

    async def close(self) -> None:
        pass

    def requests_between(self, start: float, end: float) -> int:
        return sum(1 for at, _ in self.sent if start <= at < end)


def body(n: int) -> bytes:
    return orjson.dumps({"n": n, "logger_name": "STATUS"})


def number(raw: bytes) -> int:
    return orjson.loads(raw)["n"]


async def open_spool(tmp_path: Path) -> SqliteSpool:
    return await SqliteSpool.open(tmp_path / "spool", max_bytes=100_000_000, dedup_window=0)


async def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture(autouse=True)
def fresh_supervisor():
    supervision.uninstall()
    yield
    supervision.uninstall()


def config(**upstream) -> tuple[UpstreamConfig, RetryConfig]:
    up = {"max_in_flight": 16, "batch_size": 1, "request_timeout": 2.0, **upstream}
    retry = RetryConfig(initial_backoff=0.05, max_backoff=0.4, max_rejections=3)
    return UpstreamConfig(**up), retry


REFUSALS = {
    "overloaded": Outcome(Verdict.RETRY, "overloaded", "REJECTED"),
    "token": Outcome(Verdict.RETRY, "token", "Failed to validate the token"),
    "invalid": Outcome(Verdict.INVALID, "invalid", "INVALID"),
    "rejected": Outcome(Verdict.REJECTED, "rejected", "some APPLICATION_ERROR"),
    "timeout": Outcome(Verdict.RETRY, "timeout", "no answer"),
}


@pytest.mark.parametrize("kind", sorted(REFUSALS))
async def test_refusing_everything_slows_to_the_backoff_pace(tmp_path: Path, kind: str) -> None:
    spool = await open_spool(tmp_path)
    await spool.append([Incoming(body(n), "test") for n in range(300)])
    refusal = REFUSALS[kind]
    sink = ScriptedSink(lambda bodies: refusal)
    up, retry = config()
    delivery = Delivery(spool, sink, up, retry)
    await delivery.start()
    try:
        await wait_for(lambda: len(sink.sent) >= 16, 5, "the first requests")
        start = time.monotonic()
        window = 2.0
        await wait_for(lambda: time.monotonic() - start >= window, window + 1, "the window")
        # the pace: one probe every max_backoff/2..max_backoff (0.2-0.4 s) once the backoff
        # has grown; 5 more for the growth from initial_backoff
        made = sink.requests_between(start, start + window)
        assert made <= window / (0.5 * retry.max_backoff) + 6, f"{made} requests in {window} s"
        assert spool.stats().dead_letters == 0  # no event accepted yet: nothing is their fault

        # and once the upstream accepts again, everything goes at once
        sink.answer = lambda bodies: DELIVERED
        await wait_for(lambda: delivery.stats.delivered == 300, 5, "all events delivered")
    finally:
        await delivery.stop(2)
        await spool.close()


async def test_no_dead_letter_before_the_upstream_accepted_anything(tmp_path: Path) -> None:
    """After a restart, an upstream answering INVALID to everything (a wrong endpoint, a broken
    service) must not cost the first events; once it accepts others, a refusal is the event's."""
    spool = await open_spool(tmp_path)
    await spool.append([Incoming(body(n), "test") for n in range(5)])
    sink = ScriptedSink(lambda bodies: Outcome(Verdict.INVALID, "invalid", "INVALID"))
    up, retry = config(max_in_flight=4)
    delivery = Delivery(spool, sink, up, retry)
    await delivery.start()
    try:
        await wait_for(lambda: len(sink.sent) >= 8, 5, "the events refused twice")
        assert spool.stats().dead_letters == 0
        assert delivery.stats.dead_lettered["invalid"] == 0

        sink.answer = lambda bodies: (
            Outcome(Verdict.INVALID, "invalid", "bad") if number(bodies[0]) == 3 else DELIVERED
        )
        await wait_for(lambda: spool.stats().events == 0, 10, "the spool drained")
        assert delivery.stats.delivered == 4
        assert spool.stats().dead_letters == 1
    finally:
        await delivery.stop(2)
        await spool.close()


class KillingConnection:
    """A connection shared by all requests: an answer takes a moment, and the poison event kills
    the connection, failing every request in flight on it."""

    def __init__(self, poison: int) -> None:
        self.poison = poison
        self.pending: set[asyncio.Future] = set()
        self.sent: list[list[int]] = []
        self.connected = True
        self.down_since = None

    async def start(self) -> None:
        pass

    async def wait_ready(self) -> None:
        pass

    def not_ready(self) -> None:
        return None

    async def close(self) -> None:
        pass

    async def send(self, bodies: list[bytes]) -> Outcome:
        numbers = [number(b) for b in bodies]
        self.sent.append(numbers)
        lost = Outcome(Verdict.RETRY, "connection", "connection reset", connection_lost=True)
        if self.poison in numbers:
            for f in self.pending:
                if not f.done():
                    f.set_result(lost)
            self.pending.clear()
            await asyncio.sleep(0.01)
            return lost
        answer = asyncio.get_running_loop().create_future()
        self.pending.add(answer)
        asyncio.get_running_loop().call_later(0.02, _settle_future, answer)
        try:
            return await answer
        finally:
            self.pending.discard(answer)


def _settle_future(f: asyncio.Future) -> None:
    if not f.done():
        f.set_result(DELIVERED)


async def test_an_event_that_kills_the_connection_is_dead_lettered_alone(tmp_path: Path) -> None:
    spool = await open_spool(tmp_path)
    await spool.append([Incoming(body(n), "test") for n in range(60)])
    sink = KillingConnection(poison=7)
    up, retry = config(max_in_flight=8)
    delivery = Delivery(spool, sink, up, retry)
    await delivery.start()
    try:
        await wait_for(lambda: spool.stats().events == 0, 10, "the spool drained")
        assert delivery.stats.delivered == 59
        assert delivery.stats.dead_lettered["connection_lost"] == 1
        assert spool.stats().dead_letters == 1
        # the poison went alone at the end: nothing else was in flight with it then
        assert sink.sent[-1] == [7] or [7] in sink.sent
    finally:
        await delivery.stop(2)
        await spool.close()


class FailingOnce:
    """The real spool, whose `method` fails once with `exc` (a full disk, or a bug)."""

    def __init__(self, spool: SqliteSpool, method: str, exc: Exception) -> None:
        self._spool = spool
        self._method = method
        self._exc: Exception | None = exc

    def __getattr__(self, name: str):
        real = getattr(self._spool, name)
        if name != self._method:
            return real

        async def failing(*args, **kwargs):
            if self._exc is not None:
                exc, self._exc = self._exc, None
                raise exc
            return await real(*args, **kwargs)

        return failing


@pytest.mark.parametrize(
    "exc", [SpoolUnavailable("disk I/O error"), RuntimeError("a bug")], ids=["spool", "bug"]
)
@pytest.mark.parametrize("method", ["dead_letter", "release"])
async def test_a_failure_while_settling_a_batch_one_by_one_strands_no_lease(
    tmp_path: Path, exc: Exception, method: str
) -> None:
    real = await open_spool(tmp_path)
    await real.append([Incoming(body(n), "test") for n in range(9)])
    spool = FailingOnce(real, method, exc)

    def answer(bodies: list[bytes]) -> Outcome:
        if len(bodies) > 1:
            return Outcome(Verdict.INVALID, "invalid", "one of them is bad")
        n = number(bodies[0])
        if n % 3 == 0:
            return DELIVERED
        if n % 3 == 1:
            return Outcome(Verdict.INVALID, "invalid", "bad")
        return Outcome(Verdict.REJECTED, "rejected", "not now")

    sink = ScriptedSink(answer)
    up, retry = config(max_in_flight=1, batch_size=3, accepts_arrays=True)
    retry = RetryConfig(initial_backoff=0.01, max_backoff=0.05, max_rejections=2)
    delivery = Delivery(spool, sink, up, retry)
    await delivery.start()
    try:
        # every event ends acked or dead-lettered; a stranded lease would keep it forever
        await wait_for(lambda: real.stats().events == 0, 10, "every event settled")
        assert delivery.stats.delivered == 3
        assert real.stats().dead_letters == 6
    finally:
        await delivery.stop(2)
        await real.close()


async def test_a_delivery_task_that_dies_is_reported(tmp_path: Path) -> None:
    real = await open_spool(tmp_path)
    spool = FailingOnce(real, "lease", RuntimeError("a bug in the lease loop"))
    delivery = Delivery(spool, ScriptedSink(lambda b: DELIVERED), *config())
    await delivery.start()
    try:
        await wait_for(lambda: supervision.failure() is not None, 5, "the failure reported")
        assert "a bug in the lease loop" in supervision.failure()
    finally:
        await delivery.stop(2)
        await real.close()


async def test_stopping_is_not_a_failure(tmp_path: Path) -> None:
    spool = await open_spool(tmp_path)
    await spool.append([Incoming(body(n), "test") for n in range(20)])
    delivery = Delivery(spool, ScriptedSink(lambda b: DELIVERED), *config())
    await delivery.start()
    await wait_for(lambda: delivery.stats.delivered == 20, 5, "all delivered")
    await delivery.stop(2)
    await spool.close()
    assert supervision.failure() is None
