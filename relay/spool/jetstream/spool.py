"""`relay.spool.api.Spool` on a NATS JetStream cluster (the layout: `relay.spool.jetstream`).

append: one publish per event, all of a call in flight at once, returning after every PubAck.
lease: the shared durable pull consumer (`puller.py`). ack / release / dead_letter: ack, nak
with the delay (history in the KV bucket first), or publish to the dead-letter stream and then
ack. stats / refusing: `monitor.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from nats.aio.msg import Msg
from nats.js.errors import APIError

from relay.errors import one_line
from relay.spool.api import (
    INVALID_SHARE,
    AppendResult,
    DeadLetter,
    Incoming,
    Leased,
    Reject,
    Release,
    SpoolFull,
    SpoolStats,
    SpoolUnavailable,
    append_result,
    fill_refusal,
    keep_rejects,
)
from relay.spool.dedup import digest
from relay.spool.jetstream import records, streams
from relay.spool.jetstream.connect import Connection
from relay.spool.jetstream.monitor import Monitor, message_size
from relay.spool.jetstream.options import JetStreamOptions
from relay.spool.jetstream.puller import Puller
from relay.spool.jetstream.settle import Settler

log = logging.getLogger("relay.spool.jetstream")

_FULL_CODE = 10077  # JetStream: "maximum bytes exceeded" (discard: new)
_IN_PROCESS_CODE = 10158  # JetStream: "duplicate message id is in process"
_IN_PROCESS_RETRIES = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, None)
# seconds after an append in which a lease that finds nothing looks again
_VISIBLE_AFTER = 0.25
_PUBLISH_PROBLEM_FOR = 5.0  # seconds a failed publish keeps the relay not-ready


class JetStreamSpool:
    """Implements `relay.spool.api.Spool` (admin.py: its `SpoolAdmin`)."""

    def __init__(
        self,
        conn: Connection,
        opts: JetStreamOptions,
        *,
        max_bytes: int,
        dedup_window: float,
        on_commit: Callable[[float], None] | None,
    ) -> None:
        self._conn = conn
        self._nc = conn.nc
        self._js = self._nc.jetstream(timeout=max(opts.connect_timeout, 1.0))
        self.options = opts
        self._max_bytes = max_bytes
        self._invalid_capacity = int(max_bytes * INVALID_SHARE)
        self._window = dedup_window
        self._on_commit = on_commit
        self._timeout = max(opts.connect_timeout, 1.0)
        self._puller = Puller(self._nc, opts)
        self.monitor = Monitor(self._js, opts)
        self._settler: Settler | None = None  # made in `open`, once the bucket is reached
        self._full: str | None = None
        self._publish_problem: str | None = None
        self._publish_failed_at = 0.0
        self._not_kept = 0
        self._appended_at = 0.0
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: object = None,
        *,
        max_bytes: int,
        dedup_window: float,
        on_commit: Callable[[float], None] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> JetStreamSpool:
        """Connect, create or check the streams, start pulling. `path` holds nothing here."""
        opts = JetStreamOptions.from_mapping(options)
        conn = Connection(opts)
        nc = await conn.connect()
        try:
            js = nc.jetstream(timeout=opts.connect_timeout)
            await streams.ensure_all(js, opts, max_bytes, dedup_window)
            await streams.wait_for_leaders(js, opts, opts.connect_timeout)
            spool = cls(
                conn, opts, max_bytes=max_bytes, dedup_window=dedup_window, on_commit=on_commit
            )
            kv = await spool._js.key_value(opts.attempts_bucket)
            spool._settler = Settler(
                nc,
                spool._js,
                kv,
                opts,
                spool._puller,
                spool.monitor,
                spool._publish,
                spool._timeout,
            )
            await spool._puller.start()
            await spool.monitor.start()
        except BaseException:
            await conn.close()
            raise
        log.info(
            "spool: JetStream stream %s (%d replicas) on %d server(s), consumer %s",
            opts.stream,
            opts.replicas,
            len(opts.servers),
            opts.consumer,
        )
        return spool

    # -- append ----------------------------------------------------------------------------------

    async def append(
        self, events: Sequence[Incoming], rejects: Sequence[Reject] = ()
    ) -> AppendResult:
        if not events and not rejects:
            return append_result(0, 0, 0)
        self._check_usable()
        started = time.monotonic()
        subject = self.options.subject
        messages: list[tuple[bytes, dict[str, str], int]] = []  # body, headers, stored size
        seen: set[str] = set()
        repeated = 0  # the same event twice in one call: the stream would see both at once
        for ev in events:
            msg_id = str(digest(ev.body)) if self._window > 0 else None
            if msg_id is not None:
                if msg_id in seen:
                    repeated += 1
                    continue
                seen.add(msg_id)
            headers = records.event_headers(ev.source, msg_id)
            messages.append((ev.body, headers, message_size(subject, headers, ev.body)))
        size = sum(m[2] for m in messages)
        if size and self.monitor.current().bytes + size > self._max_bytes:
            self._full = f"storing {size} bytes would exceed spool.max_bytes"
            raise SpoolFull(self._full)
        acks = await asyncio.gather(
            *(self._publish(subject, body, headers) for body, headers, _ in messages),
            return_exceptions=True,
        )
        failed = next((a for a in acks if isinstance(a, BaseException)), None)
        duplicates = repeated
        stored = stored_size = 0
        for ack, (_, _, msg_size) in zip(acks, messages, strict=True):
            if isinstance(ack, BaseException):
                continue
            if ack.duplicate:
                duplicates += 1
            else:
                stored += 1
                stored_size += msg_size
        self.monitor.appended(stored, stored_size)
        if failed is not None:
            raise self._refusal(failed)
        if self._publish_problem is not None:
            log.info("JetStream stores events again")
            self._publish_problem = None
            self._publish_failed_at = 0.0
        if stored:
            self._full = None
            self._appended_at = time.monotonic()
        dead, not_kept = await self._keep_invalid(rejects)
        if self._on_commit is not None:
            self._on_commit(time.monotonic() - started)
        return append_result(stored, duplicates, dead, not_kept)

    async def _publish(self, subject: str, body: bytes, headers: dict[str, str]) -> Any:
        for delay in _IN_PROCESS_RETRIES:
            try:
                return await self._js.publish(subject, body, timeout=self._timeout, headers=headers)
            except APIError as exc:
                # another relay (or request) publishes the same event right now: its outcome
                # decides, so ask again once it is known (then: a duplicate, or stored now)
                if exc.err_code != _IN_PROCESS_CODE or delay is None:
                    raise
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _refusal(self, exc: BaseException) -> SpoolFull | SpoolUnavailable:
        if isinstance(exc, APIError) and exc.err_code == _FULL_CODE:
            self._full = "the JetStream stream is full (spool.max_bytes)"
            return SpoolFull(self._full)
        problem = f"JetStream did not store the events: {_why(exc)}"
        if problem != self._publish_problem:  # once per change, not once per refused request
            log.warning("%s", problem)
        self._publish_problem = problem
        self._publish_failed_at = time.monotonic()
        return SpoolUnavailable(problem)

    async def _keep_invalid(self, rejects: Sequence[Reject]) -> tuple[int, int]:
        if not rejects:
            return 0, 0
        room = self._invalid_capacity - self.monitor.current().invalid_bytes
        kept, _, not_kept = keep_rejects(rejects, max(room, 0))
        now = time.time()
        stored = 0
        subject = self.options.invalid_subject
        for raw, r in kept:
            headers = records.dead_letter_headers(
                source=r.source,
                event_id=None,
                reason=r.reason,
                attempts=0,
                first_error=r.error,
                last_error=r.error,
                received_at=now,
                first_attempt_at=None,
            )
            try:
                await self._publish(subject, raw, headers)
            except APIError as exc:
                if exc.err_code != _FULL_CODE:
                    log.warning("invalid input not kept: %s", _why(exc))
                break  # in order: what follows a refused one is not kept either
            except Exception as exc:  # the events are stored: junk not kept fails nothing
                log.warning("invalid input not kept: %s", _why(exc))
                break
            stored += 1
            self.monitor.dead_lettered(1, message_size(subject, headers, raw), invalid=True)
        not_kept += len(kept) - stored
        self._not_kept += not_kept
        return stored, not_kept

    # -- lease -----------------------------------------------------------------------------------

    async def lease(self, limit: int, wait: float = 0.0) -> list[Leased]:
        self._check_open()
        puller = self._puller
        msgs = puller.take(limit)
        if (pause := puller.pause()) > 0 and not msgs:
            await asyncio.sleep(min(pause, max(wait, 0.0)))
        if (
            len(msgs) < limit
            and self._conn.problem is None
            and not puller.waiting()
            and puller.pause() <= 0
        ):
            req = await puller.request(limit - len(msgs), 0.0)
            await puller.settle(req, self._timeout)
            msgs += puller.take(limit - len(msgs))
            if not msgs and time.monotonic() - self._appended_at < _VISIBLE_AFTER:
                # the consumer's leader may be the replica that stores our last append a
                # moment after the quorum acknowledged it: look again, briefly
                wait = max(wait, _VISIBLE_AFTER)
        if not msgs and wait > 0:
            if self._conn.problem is None and puller.pause() <= 0:
                msgs = await self._wait_for(limit, wait)
            else:
                await asyncio.sleep(min(wait, 0.5))  # disconnected: nothing can come; no spin
        return [await self._leased(m) for m in msgs]

    async def _wait_for(self, limit: int, wait: float) -> list[Msg]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        puller = self._puller
        while (remaining := deadline - loop.time()) > 0:
            if not puller.waiting():
                await puller.request(limit, remaining)
            puller.arrived.clear()
            # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancellation that
            # arrives as the event is set
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await puller.arrived.wait()
            msgs = puller.take(limit)
            if msgs:
                return msgs
        return []

    async def _leased(self, msg: Msg) -> Leased:
        meta = msg.metadata
        seq = meta.sequence.stream
        attempts = rejections = 0
        if meta.num_delivered > 1 or self._settler.known(seq):
            history = await self._settler.history_of(seq)
            attempts, rejections = history.get("attempts", 0), history.get("rejections", 0)
        source = (msg.headers or {}).get(records.SOURCE, "unknown")
        received = records.stream_time(meta.timestamp)
        return Leased(seq, msg.data, source, received, attempts, rejections)

    # -- settle ------------------------------------------------------------------------------

    async def ack(self, ids: Sequence[int]) -> None:
        self._check_open()
        await self._settler.ack(ids)
        self._full = None

    async def release(self, items: Sequence[Release]) -> None:
        self._check_open()
        await self._settler.release(items)

    async def dead_letter(self, items: Sequence[DeadLetter]) -> None:
        self._check_open()
        await self._settler.dead_letter(items)

    def stats(self) -> SpoolStats:
        r = self.monitor.current()
        return SpoolStats(
            events=r.events,
            bytes=r.bytes,
            capacity_bytes=self._max_bytes,
            oldest_received_at=r.first_ts if r.events else None,
            dead_letters=r.dead_letters,
            dead_letter_bytes=r.dead_letter_bytes,
            refusing=self.refusing(),
            invalid_bytes=r.invalid_bytes,
            invalid_capacity_bytes=self._invalid_capacity,
            invalid_not_kept=self._not_kept,
        )

    def refusing(self) -> str | None:
        problem = self._conn.problem or self.monitor.problem
        if problem is None and time.monotonic() - self._publish_failed_at < _PUBLISH_PROBLEM_FOR:
            problem = self._publish_problem  # with no producer now, nothing would clear it
        if problem is not None:
            return problem
        used = self.monitor.current().bytes
        return fill_refusal(used, self._max_bytes, bool(self._full))

    def alive(self) -> bool:
        return not self._closed

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.monitor.stop()
        await self._puller.stop()
        await self._puller.release_all()
        with contextlib.suppress(Exception):  # the naks must reach the server before we leave
            await self._nc.flush(timeout=self._timeout)
        await self._conn.close()

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolUnavailable("the spool is closed")

    def _check_usable(self) -> None:
        """Refuse at once what cannot be stored now, rather than after a publish timeout; the
        monitor looks again every second, so this lifts by itself."""
        self._check_open()
        problem = self._conn.problem or self.monitor.problem
        if problem is not None:
            raise SpoolUnavailable(problem)


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "no PubAck in time (no quorum, or the servers are unreachable)"
    return one_line(str(exc)) or type(exc).__name__
