"""The delivery loop: oldest events from the spool to the sink, many requests in flight.

Delivered events are acknowledged to the spool in batched commits; failed ones go back with a
not-before time; permanent refusals go to the dead-letter table. One poisoned event never blocks
the events behind it, because every request is independent and the loop keeps leasing past it.

Requests are made by `upstream.max_in_flight` long-lived workers, each sending one chunk at a
time, which the lease loop hands to idle ones: a task per request (create, done-callbacks, an
event to say a slot is free) cost more than the rest of the relay's own work per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from relay import supervision
from relay.backoff import backoff_delay
from relay.config import RetryConfig, UpstreamConfig
from relay.delivery.outcome import Outcome, Sink, Verdict
from relay.delivery.pacing import Pacer
from relay.spool import DeadLetter, Leased, Release, Spool, SpoolRefused

log = logging.getLogger("relay.delivery")

_ACK_EVERY = 0.05  # seconds between ack commits
_ACK_BATCH = 2000
_ACK_BACKLOG = 4 * _ACK_BATCH  # delivered but not yet acked: above this, stop taking events
_RETRY_POLL = 0.25  # how often events waiting for a retry time are looked for
_MAX_LEASE = 2000
# A rejection counts toward max_rejections only while the upstream accepts other events: when it
# refuses everything, the upstream is in trouble and the events are not to blame.
_OTHERS_OK_WINDOW = 60.0
# When most recent answers are refusals (of any kind), none of them counts against an event.
_BREAKER_WINDOW = 100
_BREAKER_MIN = 20
_BREAKER_SHARE = 0.5
# An event in flight on this many connection losses in a row is sent alone from then on, so that
# an event that kills the connection is found (and dead-lettered) without taking others with it.
_SUSPECT_LOSSES = 2
_SPOOL_RETRY = 1.0  # seconds before events that could not be settled are offered again


@dataclass
class DeliveryStats:
    delivered: int = 0
    redelivered: int = 0  # sent again after a connection died with them in flight
    # the usual reasons start at zero, so they show on /metrics before the first failure
    retries: Counter[str] = field(
        default_factory=lambda: Counter(dict.fromkeys(("connection", "timeout", "token"), 0))
    )
    dead_lettered: Counter[str] = field(
        default_factory=lambda: Counter(
            dict.fromkeys(("rejected", "invalid", "connection_lost"), 0)
        )
    )
    in_flight: int = 0
    last_delivery_at: float | None = None
    last_error: str | None = None


class Delivery:
    def __init__(
        self,
        spool: Spool,
        sink: Sink,
        upstream: UpstreamConfig,
        retry: RetryConfig,
        *,
        on_delivered: Callable[[Iterable[float], float], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._spool = spool
        self._sink = sink
        self._max_in_flight = upstream.max_in_flight
        self._batch = upstream.batch_size
        self._retry = retry
        self._on_delivered = on_delivered
        self._clock = clock
        self.stats = DeliveryStats()
        self._workers: list[asyncio.Task] = []
        self._idle: deque[asyncio.Future[list[Leased] | None]] = deque()  # workers waiting
        self._queued: deque[list[Leased]] = deque()
        self._slot_freed = asyncio.Event()
        self._stopping = False
        self._to_ack: list[int] = []
        self._ack_due = asyncio.Event()
        # connection losses each event was in flight on, since its last success
        self._lost: dict[int, int] = {}
        self._solos: deque[Leased] = deque()  # suspects, leased, each to be sent alone
        self._solo_id: int | None = None  # the suspect in flight (nothing else is)
        self._pacer = Pacer(retry.initial_backoff, retry.max_backoff)
        self._recent: deque[bool] = deque(maxlen=_BREAKER_WINDOW)  # True: a refusal
        self._logged: str | None = None
        self._runner: asyncio.Task | None = None
        self._acker: asyncio.Task | None = None

    async def start(self) -> None:
        watch = supervision.watch
        self._acker = watch(asyncio.create_task(self._ack_loop(), name="delivery-acks"))
        self._workers = [
            watch(asyncio.create_task(self._work(), name=f"delivery-{i}"))
            for i in range(self._max_in_flight)
        ]
        self._runner = watch(asyncio.create_task(self._lease_loop(), name="delivery"))

    async def stop(self, timeout: float) -> None:
        """Stop taking events; let requests in flight finish for up to `timeout` seconds.
        What is not acknowledged by then stays in the spool and is sent after the restart."""
        if self._runner is not None:
            self._runner.cancel()
            # one that died was reported by supervision already: stopping goes on in order
            await asyncio.gather(self._runner, return_exceptions=True)
        self._stopping = True
        while self._idle:
            self._idle.popleft().cancel()  # idle workers end now (a cancellation: on purpose)
        self._queued.clear()  # leased, not sent: they stay in the spool
        self._solos.clear()
        if self._workers:
            _, pending = await asyncio.wait(self._workers, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                log.warning(
                    "%d requests still in flight after %.0f s; their events stay in the spool",
                    len(pending),
                    timeout,
                )
                await asyncio.gather(*pending, return_exceptions=True)
        if self._acker is not None:
            self._acker.cancel()
            await asyncio.gather(self._acker, return_exceptions=True)
        try:
            await self._flush_acks()
        except SpoolRefused as exc:
            log.error("last acks not recorded (%s): those events will be sent again", exc)

    # -- taking events --------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        while True:
            await self._sink.wait_ready()
            if len(self._to_ack) > _ACK_BACKLOG:
                # acks cannot be written (a full disk): take no more until they can
                await asyncio.sleep(0.2)
                continue
            pacer = self._pacer
            if pacer.failures or self._solo_id is not None or self._solos:
                limit = 1  # probing a refusing upstream, or a suspect goes alone
            else:
                limit = self._max_in_flight
            free = limit - self.stats.in_flight
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            if pacer.failures and (pause := pacer.wait()) > 0:
                await asyncio.sleep(pause)
                continue
            if self._solos:
                event = self._solos.popleft()
                self._solo_id = event.id
                self._dispatch([event])
                continue
            try:
                events = await self._spool.lease(
                    min(free * self._batch, _MAX_LEASE), wait=_RETRY_POLL
                )
            except SpoolRefused as exc:
                log.error("cannot read events from the spool: %s", exc)
                await asyncio.sleep(1.0)
                continue
            if not events:
                continue
            if self._lost:
                events = self._set_suspects_aside(events)
            for i in range(0, len(events), self._batch):
                self._dispatch(events[i : i + self._batch])

    def _set_suspects_aside(self, events: list[Leased]) -> list[Leased]:
        lost = self._lost
        others = []
        for e in events:
            if lost.get(e.id, 0) >= _SUSPECT_LOSSES:
                self._solos.append(e)
            else:
                others.append(e)
        return others

    def _dispatch(self, chunk: list[Leased]) -> None:
        self.stats.in_flight += 1
        if self._idle:
            self._idle.popleft().set_result(chunk)
        else:  # not expected: the lease loop takes no more than there are idle workers
            self._queued.append(chunk)

    async def _work(self) -> None:
        idle, queued, stats = self._idle, self._queued, self.stats
        new_future = asyncio.get_running_loop().create_future
        while True:
            if self._stopping:
                # an end on purpose is a cancellation, which supervision does not report
                raise asyncio.CancelledError
            if queued:
                chunk = queued.popleft()
            else:
                waiter = new_future()
                idle.append(waiter)
                chunk = await waiter
            try:
                await self._deliver(chunk)
            finally:
                stats.in_flight -= 1
                if self._solo_id is not None and chunk[0].id == self._solo_id:
                    self._solo_id = None
                self._slot_freed.set()

    async def _deliver(self, chunk: list[Leased]) -> None:
        """Send `chunk` and settle every event of it: acked, released or dead-lettered. When
        the spool or a bug gets in the way, what is still unsettled is released, so no event
        stays leased (and unsent) until a restart."""
        unsettled = chunk
        try:
            outcome = await self._send(chunk)
            if outcome.verdict is Verdict.DELIVERED:
                self._delivered(chunk, self._clock())
            elif len(chunk) > 1 and outcome.verdict in (Verdict.REJECTED, Verdict.INVALID):
                # a verdict on a batch says nothing about each event in it: ask one by one
                for i, event in enumerate(chunk):
                    unsettled = chunk[i:]
                    await self._settle([event], await self._send([event]))
            else:
                await self._settle(chunk, outcome)
            return
        except SpoolRefused as exc:
            if self._logged != "spool":
                log.error("cannot record a delivery result in the spool: %s", exc)
                self._logged = "spool"
        except Exception:
            log.exception("unexpected error while settling a delivery; the events are retried")
        await self._give_back(unsettled)

    async def _give_back(self, events: list[Leased]) -> None:
        acked = set(self._to_ack)  # delivered already: their ack is on its way
        rest = [e for e in events if e.id not in acked]
        if not rest:
            return
        try:
            await self._spool.release([Release(e.id, _SPOOL_RETRY, "not settled") for e in rest])
        except SpoolRefused:
            pass  # a failed write makes the spool forget these leases: offered again anyway
        except Exception:
            log.exception("cannot give events back to the spool; they are sent after a restart")

    async def _send(self, chunk: list[Leased]) -> Outcome:
        try:
            outcome = await self._sink.send([e.body for e in chunk])
        except Exception as exc:
            # a bug, not an upstream answer: the events must still go back to the spool
            log.exception("unexpected error while sending; the events will be retried")
            outcome = Outcome(Verdict.RETRY, "internal", f"{type(exc).__name__}: {exc}")
        self._recent.append(outcome.verdict in (Verdict.REJECTED, Verdict.INVALID))
        return outcome

    def _no_evidence(self) -> bool:
        """No event accepted since start: a refusal may be the upstream's trouble (or ours)."""
        return self.stats.delivered == 0

    # -- settling results ------------------------------------------------------------------

    async def _settle(self, chunk: list[Leased], outcome: Outcome) -> None:
        now = self._clock()
        verdict = outcome.verdict
        if verdict is Verdict.DELIVERED:
            self._delivered(chunk, now)
            return
        self.stats.last_error = f"{outcome.reason}: {outcome.error}" if outcome.error else None
        if verdict in (Verdict.REJECTED, Verdict.INVALID) and (
            self._no_evidence() or self._refusing_everything()
        ):
            # no event accepted since start, or (nearly) everything refused: the upstream's
            # trouble (or a configuration problem), not these events'
            outcome = Outcome(Verdict.RETRY, "upstream_refusing", outcome.error)
            verdict = Verdict.RETRY
        self._log_once(outcome)
        if verdict is Verdict.INVALID:
            await self._dead_letter(chunk, outcome.reason, outcome.error)
            return
        if verdict is Verdict.REJECTED and self._others_ok(now):
            doomed = [e for e in chunk if e.rejections + 1 >= self._retry.max_rejections]
            if doomed:
                await self._dead_letter(doomed, "rejected", outcome.error)
                chunk = [e for e in chunk if e not in doomed]
            rejected = True
        else:
            rejected = False
            if outcome.connection_lost:
                chunk = await self._count_loss(chunk, outcome)
            elif not outcome.retry_now:
                self._pacer.failed()  # the upstream's trouble: slow down to the backoff's pace
        if not chunk:
            return
        self.stats.retries[outcome.reason] += len(chunk)
        await self._spool.release(
            [
                Release(e.id, self._delay(e, outcome), outcome.error or outcome.reason, rejected)
                for e in chunk
            ]
        )

    async def _count_loss(self, chunk: list[Leased], outcome: Outcome) -> list[Leased]:
        """Count a connection loss against each event in flight on it; an event that was alone
        on the connection when it died `max_rejections` times is dead-lettered. The rest."""
        if outcome.reason != "connection":
            return chunk  # never sent (no connection): nothing learnt about these events
        lost = self._lost
        doomed = []
        for e in chunk:
            n = lost[e.id] = lost.get(e.id, 0) + 1
            if e.id == self._solo_id and n >= self._retry.max_rejections:
                doomed.append(e)
        if not doomed:
            return chunk
        await self._dead_letter(doomed, "connection_lost", outcome.error)
        return [e for e in chunk if e not in doomed]

    def _delivered(self, chunk: list[Leased], now: float) -> None:
        stats = self.stats
        if self._pacer.failures:
            self._pacer.succeeded()
        stats.delivered += len(chunk)
        stats.last_delivery_at = now
        if self._logged is not None:
            log.info("delivering again (last problem: %s)", self._logged)
            self._logged = None
        if self._lost:
            lost = self._lost
            for e in chunk:
                if lost.pop(e.id, None) is not None:
                    stats.redelivered += 1
        self._to_ack += [e.id for e in chunk]  # a list is built faster than a generator runs
        if len(self._to_ack) >= _ACK_BATCH:
            self._ack_due.set()
        if self._on_delivered is not None:
            self._on_delivered([e.received_at for e in chunk], now)

    def _delay(self, event: Leased, outcome: Outcome) -> float:
        if outcome.connection_lost or outcome.retry_now:
            return 0.0  # not the event's fault: send it on the next connection / with the new token
        delay = backoff_delay(event.attempts, self._retry.initial_backoff, self._retry.max_backoff)
        hint = outcome.retry_after
        if hint is not None and math.isfinite(hint):
            # honour the upstream's hint, within the bound an operator configured
            delay = min(self._retry.max_backoff, max(delay, hint))
        return delay

    def _refusing_everything(self) -> bool:
        recent = self._recent
        return len(recent) >= _BREAKER_MIN and sum(recent) > _BREAKER_SHARE * len(recent)

    def _others_ok(self, now: float) -> bool:
        last = self.stats.last_delivery_at
        return last is not None and now - last < _OTHERS_OK_WINDOW

    async def _dead_letter(self, chunk: list[Leased], reason: str, error: str) -> None:
        await self._spool.dead_letter([DeadLetter(e.id, reason, error) for e in chunk])
        for e in chunk:
            self._lost.pop(e.id, None)
        self.stats.dead_lettered[reason] += len(chunk)
        log.warning(
            "dead-lettered %d event(s) (%s): %s; see `relay dlq list`", len(chunk), reason, error
        )

    def _log_once(self, outcome: Outcome) -> None:
        key = f"{outcome.reason}: {outcome.error}" if outcome.error else outcome.reason
        if outcome.verdict is Verdict.RETRY and key != self._logged:
            log.warning("delivery failed, will retry: %s", key)
            self._logged = key

    # -- acknowledging --------------------------------------------------------------------

    async def _ack_loop(self) -> None:
        while True:
            # asyncio.timeout: 3.11's wait_for can swallow the cancel that stops this loop
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_ACK_EVERY):
                    await self._ack_due.wait()
            self._ack_due.clear()
            try:
                await self._flush_acks()
            except SpoolRefused as exc:
                if self._logged != "acks":
                    log.error("cannot acknowledge delivered events in the spool: %s", exc)
                    self._logged = "acks"
                await asyncio.sleep(1.0)

    async def _flush_acks(self) -> None:
        if self._to_ack:
            ids, self._to_ack = self._to_ack, []
            try:
                await self._spool.ack(ids)
            except SpoolRefused:
                # keep them: the spool keeps their leases, so they are acked later, not resent
                self._to_ack = ids + self._to_ack
                raise
