"""The delivery loop: oldest events from the spool to the sink, many requests in flight.

What becomes of each request's events is `settle`'s; acknowledging them in batched commits is
`acks`'; slowing down while the upstream refuses everything is the `breaker`'s; sending an event
that kills the connection alone is `suspects`'. One poisoned event never blocks the events behind
it, because every request is independent and the loop keeps leasing past it.

Requests are made by `upstream.max_in_flight` long-lived workers, each sending one chunk at a
time, which the lease loop hands to idle ones: a task per request (create, done-callbacks, an
event to say a slot is free) cost more than the rest of the relay's own work per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable

from relay import supervision
from relay.config import RetryConfig, UpstreamConfig
from relay.delivery.acks import Acks
from relay.delivery.breaker import Breaker
from relay.delivery.settle import DeliveryStats, Settler
from relay.delivery.sink import Sink
from relay.delivery.suspects import Suspects
from relay.spool import Leased, Spool, SpoolRefused

__all__ = ["Delivery", "DeliveryStats"]

log = logging.getLogger("relay.delivery")

_RETRY_POLL = 0.25  # how often events waiting for a retry time are looked for
_MAX_LEASE = 2000


class Delivery:
    """Takes events from the spool and hands them to the workers; owns the workers and the count
    of requests in flight. `clock` is the wall clock the delivery times are read on."""

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
        self._acks = Acks(spool)
        self._suspects = Suspects()
        self._breaker = Breaker(retry.initial_backoff, retry.max_backoff)
        self._settler = Settler(
            spool,
            sink,
            retry,
            acks=self._acks,
            suspects=self._suspects,
            breaker=self._breaker,
            on_delivered=on_delivered,
            clock=clock,
        )
        self.stats = self._settler.stats
        self._workers: list[asyncio.Task] = []
        self._idle: deque[asyncio.Future[list[Leased] | None]] = deque()  # workers waiting
        self._queued: deque[list[Leased]] = deque()
        self._slot_freed = asyncio.Event()
        self._stopping = False
        self._runner: asyncio.Task | None = None

    def set_retry(self, retry: RetryConfig) -> None:
        """A reload's retry settings: every delay and give-up count is computed when needed, so
        the new values apply from the next failure on. (max_in_flight and batch_size are not
        here: the workers are started with the relay.)"""
        self._breaker.set_pace(retry.initial_backoff, retry.max_backoff)
        self._settler.set_retry(retry)

    async def start(self) -> None:
        watch = supervision.watch
        self._acks.start()
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
        self._suspects.drop_waiting()
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
        await self._acks.stop()

    async def _lease_loop(self) -> None:
        breaker, suspects, stats = self._breaker, self._suspects, self.stats
        while True:
            await self._sink.wait_ready()
            if self._acks.backlogged:
                # acks cannot be written (a full disk): take no more until they can
                await asyncio.sleep(0.2)
                continue
            # one at a time while probing a refusing upstream, or while a suspect goes alone
            limit = 1 if breaker.failures or suspects.active else self._max_in_flight
            free = limit - stats.in_flight
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            if breaker.failures and (pause := breaker.pause()) > 0:
                await asyncio.sleep(pause)
                continue
            if (suspect := suspects.next_alone()) is not None:
                self._dispatch([suspect])
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
            events = suspects.set_aside(events)
            for i in range(0, len(events), self._batch):
                self._dispatch(events[i : i + self._batch])

    def _dispatch(self, chunk: list[Leased]) -> None:
        self.stats.in_flight += 1
        if self._idle:
            self._idle.popleft().set_result(chunk)
        else:  # not expected: the lease loop takes no more than there are idle workers
            self._queued.append(chunk)

    async def _work(self) -> None:
        idle, queued, stats = self._idle, self._queued, self.stats
        deliver, suspects = self._settler.deliver, self._suspects
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
                await deliver(chunk)
            finally:
                stats.in_flight -= 1
                suspects.finished(chunk)
                self._slot_freed.set()
