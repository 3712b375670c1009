"""The delivery loop alone: a scripted sink, the memory spool and a virtual clock.

Each test runs on an event loop whose clock jumps to the next timer whenever nothing is ready to
run, so a minute of backoff and probing takes milliseconds, and times can be asserted exactly
rather than with a margin for a busy machine. The spool's and the loop's wall clocks read the same
virtual time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import selectors
from collections.abc import Awaitable, Callable

import orjson
import pytest

from relay import supervision
from relay.config import RetryConfig, UpstreamConfig
from relay.delivery.loop import Delivery
from relay.delivery.settle import DeliveryStats, retry_delay
from relay.delivery.sink import DELIVERED, Outcome, Verdict
from relay.spool import Incoming, Leased, Release, SpoolUnavailable
from relay.spool.memory import MemorySpool

# -- virtual time ---------------------------------------------------------------------------------


class _Selector(selectors.DefaultSelector):
    """Never blocks: where the event loop would wait `timeout` for I/O, its clock moves on by
    `timeout` instead. Nothing here does real I/O, so the wait would only have run down."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise RuntimeError("nothing ready and no timer: every task waits for nothing")
        self._loop.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(_Selector(self))

    def time(self) -> float:
        return self.now


def run(main: Callable[[], Awaitable[None]]) -> None:
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        runner.run(main())


def now() -> float:
    return asyncio.get_running_loop().time()


async def until(check: Callable[[], bool], within: float, what: str) -> None:
    """Wait for `check`; fail if it takes more than `within` seconds of virtual time."""
    deadline = now() + within
    while not check():
        if now() > deadline:
            raise AssertionError(f"not within {within} s (virtual): {what}")
        await asyncio.sleep(0.01)


async def advance(seconds: float) -> None:
    """Let `seconds` of virtual time pass (no real time): a window to watch a rate in."""
    await asyncio.sleep(seconds)


@pytest.fixture(autouse=True)
def fresh_supervisor():
    supervision.uninstall()
    yield
    supervision.uninstall()


# -- the parts ------------------------------------------------------------------------------------

EPOCH = 1_800_000_000.0
RETRY = RetryConfig(initial_backoff=0.05, max_backoff=0.4, max_rejections=3)


def body(n: int) -> bytes:
    return orjson.dumps({"n": n, "logger_name": "STATUS"})


def wall() -> float:
    return EPOCH + now()


Answer = Callable[[list[int]], Outcome | Exception]


class ScriptedSink:
    """Answers what `answer(numbers)` says (raises what it returns as an exception) after
    `latency` seconds; records every request and the most requests it had outstanding."""

    connected = True
    down_since = None

    def __init__(self, answer: Answer, latency: float = 0.01) -> None:
        self.answer = answer
        self.latency = latency
        self.sent: list[tuple[float, list[int]]] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def start(self) -> None:
        pass

    async def wait_ready(self) -> None:
        pass

    def not_ready(self) -> str | None:
        return None

    async def close(self) -> None:
        pass

    async def send(self, bodies: list[bytes]) -> Outcome:
        numbers = [orjson.loads(b)["n"] for b in bodies]
        self.sent.append((now(), numbers))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.latency)
            result = self.answer(numbers)
        finally:
            self.in_flight -= 1
        if isinstance(result, Exception):
            raise result
        return result

    def times_sent(self, n: int) -> int:
        return sum(numbers.count(n) for _, numbers in self.sent)

    def singles(self) -> list[int]:
        return [numbers[0] for _, numbers in self.sent if len(numbers) == 1]


class Spool(MemorySpool):
    """The memory spool with the faults a test injects, and the releases it got recorded."""

    def __init__(self) -> None:
        super().__init__(dedup_window=0, clock=wall)
        self.fail_once: dict[str, Exception] = {}  # method -> raised by its next call
        self.broken: dict[str, Exception] = {}  # method -> raised by every call while set
        self.released: list[Release] = []

    def _fault(self, method: str) -> None:
        if method in self.broken:
            raise self.broken[method]
        if method in self.fail_once:
            raise self.fail_once.pop(method)

    async def lease(self, limit: int, wait: float = 0.0) -> list[Leased]:
        self._fault("lease")
        return await super().lease(limit, wait)

    async def ack(self, ids) -> None:
        self._fault("ack")
        await super().ack(ids)

    async def release(self, items) -> None:
        self._fault("release")
        self.released += items
        await super().release(items)

    async def dead_letter(self, items) -> None:
        self._fault("dead_letter")
        await super().dead_letter(items)


class Rig:
    """A running Delivery over `events` spooled events and `sink`."""

    def __init__(
        self, sink: ScriptedSink, events: int, retry: RetryConfig = RETRY, **upstream: object
    ) -> None:
        self.sink = sink
        self.events = events
        self.retry = retry
        self.upstream = UpstreamConfig(
            **{"max_in_flight": 16, "batch_size": 1, "accepts_arrays": True, **upstream}
        )

    async def __aenter__(self) -> Rig:
        self.spool = Spool()
        if self.events:
            await self.spool.append([Incoming(body(n), "test") for n in range(self.events)])
        self.delivery = Delivery(self.spool, self.sink, self.upstream, self.retry, clock=wall)
        await self.delivery.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.delivery.stop(2)
        await self.spool.close()

    @property
    def stats(self) -> DeliveryStats:
        return self.delivery.stats

    def left(self) -> int:
        return self.spool.stats().events

    def dead_letters(self) -> int:
        return self.spool.stats().dead_letters


REFUSALS = {
    "overloaded": Outcome(Verdict.RETRY, "overloaded", "REJECTED"),
    "token": Outcome(Verdict.RETRY, "token", "Failed to validate the token"),
    "invalid": Outcome(Verdict.INVALID, "invalid", "INVALID"),
    "rejected": Outcome(Verdict.REJECTED, "rejected", "some APPLICATION_ERROR"),
    "timeout": Outcome(Verdict.RETRY, "timeout", "no answer"),
}


# -- the breaker ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(REFUSALS))
def test_an_upstream_refusing_everything_gets_one_probe_at_a_time(kind: str) -> None:
    async def main() -> None:
        refusal = REFUSALS[kind]
        sink = ScriptedSink(lambda numbers: refusal)
        async with Rig(sink, 300) as rig:
            await until(lambda: len(sink.sent) >= 16, 1, "the first burst")
            await advance(3.0)  # the pace grows from initial_backoff to max_backoff
            sink.most_in_flight = 0
            first = len(sink.sent)
            await advance(30.0)
            probes = [at for at, _ in sink.sent[first:]]
            assert sink.most_in_flight == 1
            # half-jittered max_backoff (0.2-0.4 s), plus the probe's own answer time
            gaps = [b - a for a, b in zip(probes, probes[1:], strict=False)]
            assert 0.5 * RETRY.max_backoff <= min(gaps)
            assert max(gaps) <= RETRY.max_backoff + sink.latency + 1e-6
            assert rig.dead_letters() == 0  # nothing accepted yet: the events are not to blame

            sink.answer = lambda numbers: DELIVERED  # and once it accepts, all goes at once
            start = now()
            await until(lambda: rig.left() == 0, 2, "every event delivered")
            assert sink.most_in_flight == 16
            assert rig.stats.delivered == 300
            # a refusal of events before any was accepted is counted as the upstream's
            reason = "upstream_refusing" if refusal.verdict is not Verdict.RETRY else kind
            assert rig.stats.retries[reason] > 0
            assert now() - start <= RETRY.max_backoff + 1

    run(main)


def test_a_refused_token_is_retried_at_once_without_slowing_down() -> None:
    """A refused token is being replaced already (retry_now): the events go again at once, and
    delivery does not fall to the probing pace for it."""

    async def main() -> None:
        refused = Outcome(Verdict.RETRY, "token", "Jwt expired", retry_now=True)
        first = set()  # each event is refused once

        def answer(numbers: list[int]) -> Outcome:
            if numbers[0] not in first:
                first.add(numbers[0])
                return refused
            return DELIVERED

        sink = ScriptedSink(answer)
        async with Rig(sink, 300) as rig:
            # 600 requests at 16 in flight take 0.4 s; paced after each refusal, 1.5 s
            await until(lambda: rig.left() == 0, 1.0, "every event delivered, unpaced")
            assert all(r.delay == 0 for r in rig.spool.released)
            assert sink.most_in_flight == 16

    run(main)


# -- settling -------------------------------------------------------------------------------------


def test_no_dead_letter_before_the_upstream_accepted_anything() -> None:
    """After a restart, an upstream answering INVALID to everything (a wrong endpoint, a broken
    service) must not cost the first events; once it accepts others, a refusal is the event's."""

    async def main() -> None:
        sink = ScriptedSink(lambda numbers: Outcome(Verdict.INVALID, "invalid", "INVALID"))
        async with Rig(sink, 5, max_in_flight=4) as rig:
            await until(lambda: len(sink.sent) >= 12, 10, "each event refused twice or more")
            assert rig.dead_letters() == 0
            assert rig.stats.dead_lettered["invalid"] == 0

            bad = Outcome(Verdict.INVALID, "invalid", "bad")
            sink.answer = lambda numbers: bad if numbers == [3] else DELIVERED
            await until(lambda: rig.left() == 0, 5, "every event settled")
            assert rig.stats.delivered == 4
            assert rig.dead_letters() == 1
            assert rig.stats.dead_lettered["invalid"] == 1

    run(main)


def test_an_event_rejected_max_rejections_times_is_dead_lettered() -> None:
    async def main() -> None:
        rejected = Outcome(Verdict.REJECTED, "rejected", "not this one")
        sink = ScriptedSink(lambda numbers: rejected if numbers == [7] else DELIVERED)
        async with Rig(sink, 20) as rig:
            await until(lambda: rig.left() == 0, 10, "every event settled")
            assert sink.times_sent(7) == RETRY.max_rejections
            assert rig.stats.dead_lettered["rejected"] == 1
            assert rig.stats.delivered == 19
            # the rejections before the last went back to the spool, counted as rejections
            assert [r.rejected for r in rig.spool.released] == [True] * (RETRY.max_rejections - 1)

    run(main)


@pytest.mark.parametrize("verdict", [Verdict.INVALID, Verdict.REJECTED])
def test_a_refused_batch_is_sent_again_one_event_at_a_time(verdict: Verdict) -> None:
    """A verdict on a batch says nothing about each event in it: each is asked alone, and only
    the bad one pays."""

    async def main() -> None:
        def answer(numbers: list[int]) -> Outcome:
            return Outcome(verdict, verdict.value, "bad") if 7 in numbers else DELIVERED

        sink = ScriptedSink(answer)
        async with Rig(sink, 20, max_in_flight=1, batch_size=5) as rig:
            await until(lambda: rig.left() == 0, 10, "every event settled")
            batches = [numbers for _, numbers in sink.sent if len(numbers) > 1]
            assert batches[:2] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
            assert sink.singles()[:5] == [5, 6, 7, 8, 9]
            assert rig.stats.delivered == 19
            assert rig.dead_letters() == 1
            # alone, it was judged: dead at once when invalid, after max_rejections if rejected
            alone = 1 if verdict is Verdict.INVALID else RETRY.max_rejections
            assert sink.singles().count(7) == alone

    run(main)


def test_a_sink_that_raises_loses_no_event(caplog: pytest.LogCaptureFixture) -> None:
    """A bug in a sink is not an upstream answer: the events go back to the spool and are sent
    again; nothing is lost or dead-lettered for it."""

    async def main() -> None:
        raised = set()

        def answer(numbers: list[int]) -> Outcome | Exception:
            if numbers[0] % 10 == 3 and numbers[0] not in raised:
                raised.add(numbers[0])
                return RuntimeError("a bug in the sink")
            return DELIVERED

        sink = ScriptedSink(answer)
        async with Rig(sink, 50) as rig:
            await until(lambda: rig.left() == 0, 10, "every event delivered")
            assert rig.stats.delivered == 50
            assert rig.dead_letters() == 0
            assert rig.stats.retries["internal"] == 5

    with caplog.at_level(logging.ERROR, "relay.delivery"):
        run(main)
    assert "a bug in the sink" in caplog.text


# -- backoff --------------------------------------------------------------------------------------


@pytest.mark.parametrize("hint", [None, 0.3, 86400.0, math.inf])
def test_retry_delays_grow_and_stay_within_max_backoff(hint: float | None) -> None:
    async def main() -> None:
        overloaded = Outcome(Verdict.RETRY, "http_503", "busy", retry_after=hint)
        tries: dict[int, int] = {}

        def answer(numbers: list[int]) -> Outcome:
            n = numbers[0]
            tries[n] = tries.get(n, 0) + 1
            return overloaded if n > 0 and tries[n] <= 6 else DELIVERED

        sink = ScriptedSink(answer)
        async with Rig(sink, 10, max_in_flight=4) as rig:
            await until(lambda: rig.left() == 0, 60, "every event delivered")
            released: dict[int, list[float]] = {}
            for r in rig.spool.released:
                released.setdefault(r.id, []).append(r.delay)
            assert len(released) == 9
            for delays in released.values():
                assert len(delays) == 6
                for attempt, delay in enumerate(delays):
                    ceiling = min(RETRY.max_backoff, RETRY.initial_backoff * 2**attempt)
                    if hint is None or hint == math.inf:  # no usable hint: our own backoff
                        assert 0 <= delay <= ceiling
                    else:  # the upstream's hint, within max_backoff
                        assert min(hint, RETRY.max_backoff) <= delay <= RETRY.max_backoff

    run(main)


def test_retry_delay_honours_the_hint_within_max_backoff() -> None:
    retry = RetryConfig(max_backoff=30.0)
    for hint, low, high in ((math.inf, 0, 30), (86400.0, 30, 30), (5.0, 5, 30), (None, 0, 0.2)):
        delay = retry_delay(0, Outcome(Verdict.RETRY, "http_503", retry_after=hint), retry)
        assert low <= delay <= high, (hint, delay)
    lost = Outcome(Verdict.RETRY, "connection", connection_lost=True)
    assert retry_delay(10, lost, retry) == 0.0


# -- the spool in the way -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc", [SpoolUnavailable("disk I/O error"), RuntimeError("a bug")], ids=["spool", "bug"]
)
@pytest.mark.parametrize("method", ["dead_letter", "release"])
def test_a_failure_while_settling_a_batch_one_by_one_strands_no_lease(
    exc: Exception, method: str
) -> None:
    async def main() -> None:
        def answer(numbers: list[int]) -> Outcome:
            if len(numbers) > 1:
                return Outcome(Verdict.INVALID, "invalid", "one of them is bad")
            n = numbers[0]
            if n % 3 == 0:
                return DELIVERED
            if n % 3 == 1:
                return Outcome(Verdict.INVALID, "invalid", "bad")
            return Outcome(Verdict.REJECTED, "rejected", "not now")

        sink = ScriptedSink(answer)
        retry = RetryConfig(initial_backoff=0.01, max_backoff=0.05, max_rejections=2)
        async with Rig(sink, 9, retry, max_in_flight=1, batch_size=3) as rig:
            rig.spool.fail_once[method] = exc
            # every event ends acked or dead-lettered; a stranded lease would keep it forever
            await until(lambda: rig.left() == 0, 30, "every event settled")
            assert method not in rig.spool.fail_once  # the failure did happen
            assert rig.stats.delivered == 3
            assert rig.dead_letters() == 6

    run(main)


def test_acks_the_spool_cannot_write_hold_delivery_back_and_are_not_resent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Delivered events whose acks cannot be written (a full disk) keep their leases: they are
    acked once the spool writes again, not sent twice; and above a backlog of unwritten acks,
    delivery takes no more events."""

    async def main() -> None:
        sink = ScriptedSink(lambda numbers: DELIVERED)
        async with Rig(sink, 12_000, batch_size=100) as rig:
            rig.spool.broken["ack"] = SpoolUnavailable("disk full")
            await until(lambda: rig.stats.delivered >= 8000, 10, "the backlog filled")
            await advance(5.0)
            held = len(sink.sent)
            await advance(10.0)
            assert len(sink.sent) == held  # taking no more
            assert 8000 <= rig.stats.delivered < 12_000
            assert rig.left() == 12_000

            del rig.spool.broken["ack"]
            await until(lambda: rig.left() == 0, 10, "every event acked")
            assert rig.stats.delivered == 12_000
            assert all(sink.times_sent(n) == 1 for n in range(0, 12_000, 997))
            assert sum(len(numbers) for _, numbers in sink.sent) == 12_000

    with caplog.at_level(logging.INFO, "relay.delivery"):
        run(main)
    assert caplog.text.count("cannot acknowledge delivered events") == 1
    assert "acknowledged in the spool again" in caplog.text


# -- an event that kills the connection -----------------------------------------------------------


class KillingConnection(ScriptedSink):
    """One connection shared by all requests: the poison event kills it, failing every request
    in flight on it."""

    def __init__(self, poison: int) -> None:
        super().__init__(lambda numbers: DELIVERED, latency=0.02)
        self.poison = poison
        self.killed = asyncio.Event()

    async def send(self, bodies: list[bytes]) -> Outcome:
        lost = Outcome(Verdict.RETRY, "connection", "connection reset", connection_lost=True)
        numbers = [orjson.loads(b)["n"] for b in bodies]
        self.sent.append((now(), numbers))
        if self.poison in numbers:
            self.killed.set()
            self.killed = asyncio.Event()
            return lost
        killed = self.killed
        with_answer = asyncio.ensure_future(asyncio.sleep(self.latency))
        dying = asyncio.ensure_future(killed.wait())
        done, pending = await asyncio.wait({with_answer, dying}, return_when="FIRST_COMPLETED")
        for f in pending:
            f.cancel()
        return lost if dying in done else DELIVERED


def test_an_event_that_kills_the_connection_is_dead_lettered_alone() -> None:
    async def main() -> None:
        sink = KillingConnection(poison=7)
        async with Rig(sink, 60, max_in_flight=8) as rig:
            await until(lambda: rig.left() == 0, 30, "every event settled")
            assert rig.stats.delivered == 59
            assert rig.stats.dead_lettered["connection_lost"] == 1
            assert rig.dead_letters() == 1
            # it went alone RETRY.max_rejections times: nothing else was in flight with it then
            alone = [numbers for _, numbers in sink.sent if numbers == [7]]
            assert len(alone) >= RETRY.max_rejections
            assert rig.stats.redelivered > 0  # the others lost with it were sent again

    run(main)


# -- supervision ----------------------------------------------------------------------------------


def test_a_delivery_task_that_dies_is_reported() -> None:
    async def main() -> None:
        async with Rig(ScriptedSink(lambda numbers: DELIVERED), 0) as rig:
            rig.spool.fail_once["lease"] = RuntimeError("a bug in the lease loop")
            await until(lambda: supervision.failure() is not None, 5, "the failure reported")
            assert "a bug in the lease loop" in supervision.failure()

    run(main)


def test_stopping_is_not_a_failure() -> None:
    async def main() -> None:
        async with Rig(ScriptedSink(lambda numbers: DELIVERED), 20) as rig:
            await until(lambda: rig.stats.delivered == 20, 5, "all delivered")

    run(main)
    assert supervision.failure() is None
