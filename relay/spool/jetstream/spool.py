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

import orjson
from nats.aio.msg import Msg
from nats.js.errors import APIError, KeyNotFoundError

from relay.errors import one_line
from relay.spool.api import (
    INVALID_SHARE,
    READY_FILL,
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
    bounded_delay,
    keep_rejects,
)
from relay.spool.dedup import digest
from relay.spool.jetstream import records, streams
from relay.spool.jetstream.connect import Connection
from relay.spool.jetstream.monitor import Monitor, message_size
from relay.spool.jetstream.options import JetStreamOptions
from relay.spool.jetstream.puller import Puller

log = logging.getLogger("relay.spool.jetstream")

_FULL_CODE = 10077  # JetStream: "maximum bytes exceeded" (discard: new)
_IN_PROCESS_CODE = 10158  # JetStream: "duplicate message id is in process"
_IN_PROCESS_RETRIES = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, None)
_DEAD_LETTER_FULL_RETRY = 60.0  # seconds before an event the DLQ had no room for comes back


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
        self._kv: Any = None
        # delivery history of held events that were given back before (the attempts bucket's
        # value, cached while the event is held here)
        self._history: dict[int, dict[str, Any]] = {}
        # seqs this relay acked or dead-lettered lately: a second ack of one must not count (its
        # removal may not be applied yet, so a delete would still find it)
        self._settled = Recent(100_000)
        self._full: str | None = None
        self._publish_problem: str | None = None
        self._not_kept = 0
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
            spool._kv = await spool._js.key_value(opts.attempts_bucket)
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
        messages = []
        size = 0
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
            messages.append((ev.body, headers))
            size += message_size(subject, headers, ev.body)
        if size:
            used = self.monitor.current().bytes
            if used + size > self._max_bytes:
                self._full = f"storing {size} bytes would exceed spool.max_bytes"
                raise SpoolFull(self._full)
        acks = await asyncio.gather(
            *(self._publish(subject, body, headers) for body, headers in messages),
            return_exceptions=True,
        )
        failed = next((a for a in acks if isinstance(a, BaseException)), None)
        duplicates = sum(1 for a in acks if not isinstance(a, BaseException) and a.duplicate)
        duplicates += repeated
        stored = len(acks) - (duplicates - repeated)
        stored -= sum(1 for a in acks if isinstance(a, BaseException))
        self.monitor.appended(stored, size * stored // max(len(messages), 1))
        if failed is not None:
            raise self._refusal(failed)
        self._publish_problem = None
        if stored:
            self._full = None
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
        why = _why(exc)
        self._publish_problem = f"JetStream did not store the events: {why}"
        log.warning("%s", self._publish_problem)
        return SpoolUnavailable(self._publish_problem)

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
        if not msgs and self._conn.problem is None:
            if not puller.waiting():
                req = await puller.request(limit, 0.0)
                await puller.settle(req, self._timeout)
            msgs = puller.take(limit)
            if not msgs and wait > 0:
                msgs = await self._wait_for(limit, wait)
        elif not msgs and wait > 0:
            await asyncio.sleep(min(wait, 0.5))  # disconnected: nothing can come; do not spin
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
        if meta.num_delivered > 1 or seq in self._history:
            history = await self._history_of(seq)
            attempts, rejections = history.get("attempts", 0), history.get("rejections", 0)
        source = (msg.headers or {}).get(records.SOURCE, "unknown")
        received = records.stream_time(meta.timestamp)
        return Leased(seq, msg.data, source, received, attempts, rejections)

    async def _history_of(self, seq: int) -> dict[str, Any]:
        known = self._history.get(seq)
        if known is not None:
            return known
        try:
            entry = await self._kv.get(str(seq))
        except KeyNotFoundError:
            return {}
        except Exception as exc:  # unreadable now: counted as fresh, which only delays giving up
            log.warning("attempts of event %d unreadable: %s", seq, _why(exc))
            return {}
        try:
            history = orjson.loads(entry.value or b"{}")
        except orjson.JSONDecodeError:
            return {}
        self._history[seq] = history
        return history

    # -- settle ------------------------------------------------------------------------------

    async def ack(self, ids: Sequence[int]) -> None:
        self._check_open()
        removed = size = 0
        for seq in ids:
            msg = self._puller.drop(seq)
            if msg is None:
                # not held (released to the server meanwhile, or acked already): delete it
                if seq not in self._settled:
                    removed += await self._delete(seq)
                continue
            self._settled.add(seq)
            with contextlib.suppress(Exception):  # not acked: it comes back, and dedup upstream
                await msg.ack()
            removed += 1
            size += message_size(self.options.subject, msg.headers, msg.data)
            await self._forget_history(seq)
        if removed:
            self.monitor.removed(removed, size)
            self._full = None
            await self._flush()

    async def release(self, items: Sequence[Release]) -> None:
        self._check_open()
        now = time.time()
        for item in items:
            msg = self._puller.held.get(item.id)
            if msg is None or item.id in self._puller.buffer_seqs():
                continue  # not leased: nothing to give back
            history = await self._history_of(item.id)
            history = {
                "attempts": history.get("attempts", 0) + 1,
                "rejections": history.get("rejections", 0) + int(item.rejected),
                "first_error": history.get("first_error") or item.error,
                "last_error": item.error,
                "first_attempt_at": history.get("first_attempt_at") or now,
            }
            self._history[item.id] = history
            try:
                await self._kv.put(str(item.id), orjson.dumps(history))
            except Exception as exc:  # the retry matters more than its count
                log.warning("attempts of event %d not recorded: %s", item.id, _why(exc))
            delay = bounded_delay(item.delay)
            if delay < self.options.ack_wait / 2:
                # a short delay is kept here (in_progress keeps it ours): due exactly then and
                # before new events, where the server's redelivery of a nak comes whenever its
                # ack queue gets to it
                self._puller.later(item.id, delay)
                continue
            self._puller.drop(item.id)
            self._history.pop(item.id, None)
            with contextlib.suppress(Exception):  # not naked: it comes back after ack_wait
                await msg.nak(delay=delay)
        await self._flush()

    async def dead_letter(self, items: Sequence[DeadLetter]) -> None:
        self._check_open()
        removed = size = 0
        for item in items:
            msg = self._puller.held.get(item.id)
            if msg is None and item.id in self._settled:
                continue
            if msg is not None:
                self._settled.add(item.id)
                stored = await self._dead_letter_one(
                    item, msg.data, msg.headers, msg.metadata.timestamp
                )
                self._puller.drop(item.id)
                if stored:
                    with contextlib.suppress(Exception):
                        await msg.ack()
                else:  # never acked without its dead letter stored: it stays in the queue
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=_DEAD_LETTER_FULL_RETRY)
                    continue
            else:
                # released to the server meanwhile: read it, store its dead letter, delete it
                try:
                    raw = await self._js.get_msg(self.options.stream, seq=item.id, direct=True)
                except Exception:  # gone (delivered or dead-lettered by another relay)
                    continue
                if not await self._dead_letter_one(item, raw.data or b"", raw.headers, raw.time):
                    continue
                await self._delete(item.id)
                msg = raw
            removed += 1
            size += message_size(self.options.subject, msg.headers, msg.data or b"")
            await self._forget_history(item.id)
        if removed:
            self.monitor.removed(removed, size)
        await self._flush()

    async def _dead_letter_one(
        self, item: DeadLetter, body: bytes, headers: dict[str, str] | None, stamp: Any
    ) -> bool:
        history = await self._history_of(item.id)
        subject = self.options.dlq_subject
        dl_headers = records.dead_letter_headers(
            source=(headers or {}).get(records.SOURCE, "unknown"),
            event_id=item.id,
            reason=item.reason,
            attempts=history.get("attempts", 0) + 1,
            first_error=history.get("first_error") or item.error,
            last_error=item.error,
            received_at=records.stream_time(stamp),
            first_attempt_at=history.get("first_attempt_at") or time.time(),
            msg_id=f"{self.options.stream}:{item.id}",
        )
        try:
            await self._publish(subject, body, dl_headers)
        except Exception as exc:
            log.warning(
                "event %d not moved to dead letters (%s); kept in the queue, retried in %.0f s",
                item.id,
                _why(exc),
                _DEAD_LETTER_FULL_RETRY,
            )
            return False
        self.monitor.dead_lettered(1, message_size(subject, dl_headers, body), invalid=False)
        return True

    async def _delete(self, seq: int) -> int:
        """Delete a message this relay does not hold; 1 when it was there."""
        try:
            await self._js.delete_msg(self.options.stream, seq)
        except Exception:  # not there (delivered already): nothing to delete
            return 0
        return 1

    async def _forget_history(self, seq: int) -> None:
        if self._history.pop(seq, None) is not None:
            with contextlib.suppress(Exception):  # a leftover expires with the bucket's max age
                await self._kv.purge(str(seq))

    async def _flush(self) -> None:
        # acks and naks are fire-and-forget; a flush returns once the server has read them, so
        # the next lease cannot overtake them
        with contextlib.suppress(Exception):
            await self._nc.flush(timeout=self._timeout)

    # -- state -----------------------------------------------------------------------------------

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

    def in_flight(self) -> int:
        """Messages this relay holds (leased or pulled): its share of the consumer's ack pending."""
        return len(self._puller.held)

    def refusing(self) -> str | None:
        problem = self._conn.problem or self.monitor.problem or self._publish_problem
        if problem is not None:
            return problem
        used = self.monitor.current().bytes
        if self._full or used >= READY_FILL * self._max_bytes:
            return (
                f"spool is {100 * used / self._max_bytes:.0f}% full "
                f"({used} of {self._max_bytes} bytes)"
            )
        return None

    def alive(self) -> bool:
        return not self._closed

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.monitor.stop()
        await self._puller.stop()
        await self._puller.release_all()
        await self._flush()
        await self._conn.close()

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolUnavailable("the spool is closed")

    def _check_usable(self) -> None:
        self._check_open()
        if self._conn.problem is not None:
            raise SpoolUnavailable(f"JetStream: {self._conn.problem}")


class Recent:
    """The last `size` ints added, for membership tests."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: dict[int, None] = {}

    def add(self, item: int) -> None:
        self._items[item] = None
        if len(self._items) > self._size:
            del self._items[next(iter(self._items))]

    def __contains__(self, item: object) -> bool:
        return item in self._items


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "no PubAck in time (no quorum, or the servers are unreachable)"
    return one_line(str(exc)) or type(exc).__name__
