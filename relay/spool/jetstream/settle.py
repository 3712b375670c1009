"""Settling what delivery leased: ack, release (history in the KV bucket, short delays kept
here), move to the dead-letter stream. Owns the delivery history of the events this relay holds.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from relay.errors import one_line
from relay.spool.api import DeadLetter, Release, bounded_delay
from relay.spool.jetstream import records
from relay.spool.jetstream.monitor import Monitor, message_size
from relay.spool.jetstream.options import JetStreamOptions
from relay.spool.jetstream.puller import Puller

log = logging.getLogger("relay.spool.jetstream")

_DEAD_LETTER_FULL_RETRY = 60.0  # seconds before an event the DLQ had no room for comes back


class Settler:
    """ack / release / dead_letter of `relay.spool.api.Spool` for the jetstream backend."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        kv: Any,
        opts: JetStreamOptions,
        puller: Puller,
        monitor: Monitor,
        publish: Callable[[str, bytes, dict[str, str]], Any],
        timeout: float,
    ) -> None:
        self._nc = nc
        self._js = js
        self._kv = kv
        self.options = opts
        self._puller = puller
        self.monitor = monitor
        self._publish = publish
        self._timeout = timeout
        # delivery history of held events that were given back before (the attempts bucket's
        # value, cached while the event is held here)
        self._history: dict[int, dict[str, Any]] = {}
        # seqs this relay acked or dead-lettered lately: a second ack of one must not count (its
        # removal may not be applied yet, so a delete would still find it)
        self._settled = Recent(10_000)

    def known(self, seq: int) -> bool:
        return seq in self._history

    async def history_of(self, seq: int) -> dict[str, Any]:
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
            await self._flush()

    async def release(self, items: Sequence[Release]) -> None:
        now = time.time()
        for item in items:
            msg = self._puller.held.get(item.id)
            if msg is None or item.id in self._puller.buffer_seqs():
                continue  # not leased: nothing to give back
            history = await self.history_of(item.id)
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
        history = await self.history_of(item.id)
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
    return one_line(str(exc)) or type(exc).__name__
