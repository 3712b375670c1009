"""Settling what a request came to: every event of it ends acknowledged, released with a time
for its next attempt, or dead-lettered, and none stays leased.

A refusal is held against an event only when the upstream is known to accept others: not before
the first success since start, nor while (nearly) everything is refused. A lost connection is held
only against an event that was alone on it (see `suspects`), a refused token against none. A
verdict on a batch says nothing about each event in it, so a refused batch is sent again one event
at a time.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from relay.backoff import backoff_delay
from relay.config import RetryConfig
from relay.delivery.acks import Acks
from relay.delivery.breaker import Breaker
from relay.delivery.sink import Outcome, Sink, Verdict
from relay.delivery.suspects import Suspects
from relay.spool import DeadLetter, Leased, Release, Spool, SpoolRefused

log = logging.getLogger("relay.delivery")

# A rejection counts toward max_rejections only while the upstream accepts other events: when it
# refuses everything, the upstream is in trouble and the events are not to blame.
_OTHERS_OK_WINDOW = 60.0
_SPOOL_RETRY = 1.0  # seconds before events that could not be settled are offered again


@dataclass
class DeliveryStats:
    """Read by /metrics and /status. The Settler writes all but `in_flight` (the lease loop's)."""

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


def retry_delay(attempts: int, outcome: Outcome, retry: RetryConfig) -> float:
    """Seconds before an event that failed `attempts` times before, and now with `outcome`, is
    offered again."""
    if outcome.connection_lost or outcome.retry_now:
        return 0.0  # not the event's fault: send it on the next connection / with the new token
    delay = backoff_delay(attempts, retry.initial_backoff, retry.max_backoff)
    hint = outcome.retry_after
    if hint is not None and math.isfinite(hint):
        # honour the upstream's hint, within the bound an operator configured
        delay = min(retry.max_backoff, max(delay, hint))
    return delay


class Settler:
    """Sends one chunk of leased events and settles each of them; owns `stats` and the
    log-once state of delivery problems."""

    def __init__(
        self,
        spool: Spool,
        sink: Sink,
        retry: RetryConfig,
        *,
        acks: Acks,
        suspects: Suspects,
        breaker: Breaker,
        on_delivered: Callable[[Iterable[float], float], None] | None,
        clock: Callable[[], float],
    ) -> None:
        self._spool, self._sink, self._retry = spool, sink, retry
        self._acks, self._suspects, self._breaker = acks, suspects, breaker
        self._on_delivered = on_delivered
        self._clock = clock
        self.stats = DeliveryStats()
        self._logged: str | None = None  # the problem last logged, until delivery works again

    def set_retry(self, retry: RetryConfig) -> None:
        """A reload's backoff and max_rejections: read per failure, so safe to swap any time."""
        self._retry = retry

    async def deliver(self, chunk: list[Leased]) -> None:
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
        acked = self._acks.pending()  # delivered already: their ack is on its way
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
        self._breaker.answered(outcome.verdict in (Verdict.REJECTED, Verdict.INVALID))
        return outcome

    async def _settle(self, chunk: list[Leased], outcome: Outcome) -> None:
        now = self._clock()
        verdict = outcome.verdict
        if verdict is Verdict.DELIVERED:
            self._delivered(chunk, now)
            return
        self.stats.last_error = f"{outcome.reason}: {outcome.error}" if outcome.error else None
        if verdict in (Verdict.REJECTED, Verdict.INVALID) and (
            self.stats.delivered == 0 or self._breaker.refusing_everything()
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
                self._breaker.failed()  # the upstream's trouble: slow down to the backoff's pace
        if not chunk:
            return
        self.stats.retries[outcome.reason] += len(chunk)
        await self._spool.release(
            [
                Release(
                    e.id,
                    retry_delay(e.attempts, outcome, self._retry),
                    outcome.error or outcome.reason,
                    rejected,
                )
                for e in chunk
            ]
        )

    async def _count_loss(self, chunk: list[Leased], outcome: Outcome) -> list[Leased]:
        """Count a connection loss against each event in flight on it and dead-letter the ones
        it dooms; the rest."""
        if outcome.reason != "connection":
            return chunk  # never sent (no connection): nothing learnt about these events
        doomed = self._suspects.connection_lost(chunk, self._retry.max_rejections)
        if not doomed:
            return chunk
        await self._dead_letter(doomed, "connection_lost", outcome.error)
        return [e for e in chunk if e not in doomed]

    def _delivered(self, chunk: list[Leased], now: float) -> None:
        stats = self.stats
        if self._breaker.failures:
            self._breaker.succeeded()
        stats.delivered += len(chunk)
        stats.last_delivery_at = now
        if self._logged is not None:
            log.info("delivering again (last problem: %s)", self._logged)
            self._logged = None
        stats.redelivered += self._suspects.delivered(chunk)
        self._acks.add([e.id for e in chunk])  # a list is built faster than a generator runs
        if self._on_delivered is not None:
            self._on_delivered([e.received_at for e in chunk], now)

    def _others_ok(self, now: float) -> bool:
        last = self.stats.last_delivery_at
        return last is not None and now - last < _OTHERS_OK_WINDOW

    async def _dead_letter(self, chunk: list[Leased], reason: str, error: str) -> None:
        await self._spool.dead_letter([DeadLetter(e.id, reason, error) for e in chunk])
        self._suspects.forget(chunk)
        self.stats.dead_lettered[reason] += len(chunk)
        log.warning(
            "dead-lettered %d event(s) (%s): %s; see `relay dlq list`", len(chunk), reason, error
        )

    def _log_once(self, outcome: Outcome) -> None:
        key = f"{outcome.reason}: {outcome.error}" if outcome.error else outcome.reason
        if outcome.verdict is Verdict.RETRY and key != self._logged:
            log.warning("delivery failed, will retry: %s", key)
            self._logged = key
