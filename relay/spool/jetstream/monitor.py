"""What the streams hold and whether they can take writes, kept in memory for `stats()` and
`refusing()` (called on every scrape and every /readyz).

Several relays change the streams, so the numbers come from the servers: stream info of the
queue and of both dead-letter streams, every `EVERY` seconds. This relay's own appends and
settlements since the last reading are added on top, so that its counters move at once. A
reading is not adopted while this relay's acks of the last moments may not be applied yet (the
removal of an acked message goes through the stream's Raft group after the ack), unless the
last adopted reading is older than `STALE`: under steady load the numbers then lag by a moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from nats.js import JetStreamContext

from relay.errors import one_line
from relay.spool.jetstream.options import JetStreamOptions
from relay.spool.jetstream.records import stream_time

log = logging.getLogger("relay.spool.jetstream")

EVERY = 1.0
SETTLING = 0.5  # an ack this recent may not be reflected in a stream reading yet
STALE = 10.0
READ_TIMEOUT = 1.0


@dataclass
class Reading:
    events: int = 0
    bytes: int = 0
    first_ts: float | None = None
    dead_letters: int = 0
    dead_letter_bytes: int = 0
    invalid_bytes: int = 0
    ack_pending: int = 0


def message_size(subject: str, headers: dict[str, str] | None, data: bytes) -> int:
    """What a message counts against a stream's max_bytes (nats-server's file store: record
    header, subject, headers as sent, data, hash)."""
    if not headers:
        return 22 + len(subject) + len(data) + 8
    raw = 12 + sum(len(k) + len(v) + 4 for k, v in headers.items()) + 2
    return 22 + len(subject) + 4 + raw + len(data) + 8


class Monitor:
    """Owns the latest reading, this relay's changes since, and the streams' health."""

    def __init__(self, js: JetStreamContext, opts: JetStreamOptions) -> None:
        self._js = js
        self._opts = opts
        self.reading = Reading()
        self.delta = Reading()
        self.problem: str | None = None
        self._adopted_at = 0.0
        self._last_settle = 0.0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.refresh(force=True)
        self._task = asyncio.create_task(self._run(), name="jetstream monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- this relay's changes --------------------------------------------------------------------

    def appended(self, count: int, size: int) -> None:
        self.delta.events += count
        self.delta.bytes += size

    def removed(self, count: int, size: int) -> None:
        self.delta.events -= count
        self.delta.bytes -= size
        self._last_settle = time.monotonic()

    def dead_lettered(self, count: int, size: int, invalid: bool) -> None:
        self.delta.dead_letters += count
        self.delta.dead_letter_bytes += size
        if invalid:
            self.delta.invalid_bytes += size

    def current(self) -> Reading:
        r, d = self.reading, self.delta
        return Reading(
            events=max(r.events + d.events, 0),
            bytes=max(r.bytes + d.bytes, 0),
            first_ts=r.first_ts,
            dead_letters=max(r.dead_letters + d.dead_letters, 0),
            dead_letter_bytes=max(r.dead_letter_bytes + d.dead_letter_bytes, 0),
            invalid_bytes=max(r.invalid_bytes + d.invalid_bytes, 0),
            ack_pending=r.ack_pending,
        )

    # -- readings ----------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            # while the streams cannot be read, look again sooner: readiness comes back with it
            await asyncio.sleep(EVERY if self.problem is None else EVERY / 4)
            await self.refresh()

    async def refresh(self, force: bool = False) -> None:
        asked = time.monotonic()
        settled_quietly = asked - self._last_settle > SETTLING
        # read even when the reading will not be adopted: it is also the health check
        adopt = force or settled_quietly or asked - self._adopted_at > STALE
        before = Reading(**vars(self.delta))
        try:
            reading = await self._read()
        except Exception as exc:  # any failure to read is a reason not to be ready
            problem = f"JetStream stream {self._opts.stream} cannot be read: {_why(exc)}"
            if problem != self.problem:
                log.warning("%s", problem)
            self.problem = problem
            return
        if self.problem is not None:
            log.info("JetStream stream %s answers again", self._opts.stream)
        self.problem = None
        if not adopt or (self._last_settle > asked and not force):
            return  # acks went out just before or while asking: it may or may not count them
        self.reading = reading
        # changes made while the reading was on its way may be in it or not: keep them out of
        # the delta only if they were made before asking
        d = self.delta
        self.delta = Reading(
            events=d.events - before.events,
            bytes=d.bytes - before.bytes,
            dead_letters=d.dead_letters - before.dead_letters,
            dead_letter_bytes=d.dead_letter_bytes - before.dead_letter_bytes,
            invalid_bytes=d.invalid_bytes - before.invalid_bytes,
        )
        self._adopted_at = asked

    async def _read(self) -> Reading:
        opts = self._opts
        # short: a reading that hangs on a cluster electing leaders would hold readiness back
        timeout = READ_TIMEOUT
        queue = await asyncio.wait_for(self._js.stream_info(opts.stream), timeout)
        if queue.cluster is not None and not queue.cluster.leader:
            raise RuntimeError("no leader (a quorum of its replicas is down)")
        dlq = await asyncio.wait_for(self._js.stream_info(opts.dlq_stream), timeout)
        invalid = await asyncio.wait_for(self._js.stream_info(opts.invalid_stream), timeout)
        state = queue.state
        first_ts = None
        if state.messages:
            first_ts = await self._first_time(state.first_seq)
        return Reading(
            events=state.messages,
            bytes=state.bytes,
            first_ts=first_ts,
            dead_letters=dlq.state.messages + invalid.state.messages,
            dead_letter_bytes=dlq.state.bytes + invalid.state.bytes,
            invalid_bytes=invalid.state.bytes,
        )

    async def _first_time(self, first_seq: int) -> float | None:
        try:
            msg = await self._js.get_msg(
                self._opts.stream,
                seq=first_seq,
                subject=self._opts.subject,
                next=True,
                direct=True,
            )
        except Exception:  # removed meanwhile (delivered): the next reading finds the new first
            return self.reading.first_ts
        return stream_time(msg.time) if msg.time is not None else self.reading.first_ts


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "no answer (no quorum, or the servers are unreachable)"
    return one_line(str(exc)) or type(exc).__name__
