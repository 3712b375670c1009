"""The jetstream spool seen from outside the relay (`relay spool`, `relay dlq`), while relays run
on it or not: `JetStreamAdmin` implements `relay.spool.api.SpoolAdmin` over the streams of the
design (`relay.spool.jetstream`).

Each call opens its own connection and closes it: the protocol has no close(), and a command
runs one call. The admin never creates a stream (a typo in the configuration must not make an
empty spool appear): a missing one is a one-line SpoolUnreadable, as is every other failure.

Messages are read with the stream leader's "get message" API, not with direct get: a direct get
may be answered by a follower that has not yet applied a delete or a purge, and a `relay dlq
list` just after a replay must not show the replayed dead letters again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager, suppress
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg, StreamState
from nats.js.errors import APIError, NotFoundError

from relay.errors import UserError, one_line
from relay.spool.api import (
    INVALID_SHARE,
    DeadLetterRecord,
    SalvageReport,
    SpoolError,
    SpoolStats,
    SpoolUnreadable,
)
from relay.spool.jetstream import records, streams
from relay.spool.jetstream.check import check_layout, why
from relay.spool.jetstream.connect import Connection, servers_text
from relay.spool.jetstream.options import JetStreamOptions

# per API request: a purge or a stream info of a large stream on a loaded cluster takes a while
REQUEST_TIMEOUT = 10.0
SCAN_WIDTH = 64  # requests in flight at once when every message of a stream is read
# per_source reads the oldest this many waiting events; the rest are one "(not read)" entry
PER_SOURCE_READ = 20_000
NOT_READ = "(not read)"


class JetStreamAdmin:
    """`relay.spool.api.SpoolAdmin` for the streams named by `options` (`spool.jetstream`).

    `path` is ignored: nothing the spool's promise depends on is on the local disk."""

    def __init__(
        self,
        path: str,
        *,
        max_bytes: int,
        options: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.opts = JetStreamOptions.from_mapping(options)
        self._max_bytes = max_bytes
        self._clock = clock  # wall-clock time, as stream times are

    # -- SpoolAdmin ---------------------------------------------------------------------------

    async def stats(self) -> SpoolStats:
        opts = self.opts
        async with self._session("read") as (_, js):
            queue = (await js.stream_info(opts.stream)).state
            dead = (await js.stream_info(opts.dlq_stream)).state
            invalid = (await js.stream_info(opts.invalid_stream)).state
            oldest = None
            if queue.messages:
                first = await _next(js, opts.stream, opts.subject, queue.first_seq)
                oldest = records.stream_time(first.time) if first is not None else None
        return SpoolStats(
            events=queue.messages,
            # what JetStream stores (headers and per-message overhead included): that is what
            # fills the stream's max_bytes, so it is what the operator must compare with it
            bytes=queue.bytes,
            capacity_bytes=self._max_bytes,
            oldest_received_at=oldest,
            dead_letters=dead.messages + invalid.messages,
            dead_letter_bytes=dead.bytes + invalid.bytes,
            invalid_bytes=invalid.bytes,
            invalid_capacity_bytes=int(INVALID_SHARE * self._max_bytes),
        )

    async def per_source(self) -> dict[str, dict[str, int]]:
        opts = self.opts
        out: dict[str, dict[str, int]] = {}

        def numbers(msg: RawStreamMsg) -> dict[str, int]:
            source = (msg.headers or {}).get(records.SOURCE, "unknown")
            return out.setdefault(source, {"events": 0, "bytes": 0, "dead_letters": 0})

        async with self._session("read") as (_, js):
            total = (await js.stream_info(opts.stream)).state.messages
            read = 0
            async for msg in _scan(js, opts.stream, opts.subject):
                counted = numbers(msg)
                counted["events"] += 1
                counted["bytes"] += len(msg.data or b"")
                read += 1
                if read >= PER_SOURCE_READ:
                    break
            if total > read >= PER_SOURCE_READ:
                # reading a message costs ~0.4 ms here: a big backlog is counted, not read
                out[NOT_READ] = {"events": total - read, "bytes": 0, "dead_letters": 0}
            for stream, subject in _dead_letter_streams(opts):
                async for msg in _scan(js, stream, subject):
                    numbers(msg)["dead_letters"] += 1
        return out

    async def check(self) -> list[str]:
        # a missing stream is a finding here, not an error: the other calls refuse to run then
        async with self._session("check", streams_needed=False) as (_, js):
            return await check_layout(js, self.opts, self._max_bytes)

    async def list_dead_letters(self, limit: int = 1000) -> list[DeadLetterRecord]:
        out: list[DeadLetterRecord] = []
        if limit <= 0:
            return out
        async with (
            self._session("read") as (_, js),
            aclosing(_dead_letters(js, self.opts)) as found,
        ):
            async for record in found:
                out.append(record)
                if len(out) >= limit:
                    break
        return out

    async def replay_dead_letters(
        self, ids: Sequence[int] | None, prepare: Callable[[bytes], bytes]
    ) -> tuple[list[int], dict[int, str]]:
        opts = self.opts
        replayed: list[int] = []
        skipped: dict[int, str] = {}
        async with self._session("replay dead letters of") as (_, js):
            chosen = _dead_letters(js, opts) if ids is None else _these(js, opts, ids, skipped)
            async with aclosing(chosen) as found:
                async for record in found:
                    try:
                        body = prepare(record.body)
                    except ValueError as exc:
                        skipped[record.id] = str(exc)
                        continue
                    refused = await _replay(js, opts, record, body)
                    if refused is not None:
                        skipped[record.id] = refused
                        break  # the queue is full: so it is for the rest
                    replayed.append(record.id)
        return replayed, skipped

    async def purge_dead_letters(self, older_than: float) -> int:
        cutoff = self._clock() - older_than
        purged = 0
        async with self._session("purge dead letters of") as (nc, js):
            for stream, subject in _dead_letter_streams(self.opts):
                state = (await js.stream_info(stream)).state
                if not state.messages:
                    continue
                keep = await _first_not_before(js, stream, subject, state, cutoff)
                if keep > state.first_seq:
                    purged += await _purge_before(nc, stream, keep)
        return purged

    async def salvage(self, place: str) -> SalvageReport:
        raise SpoolUnreadable(
            "the jetstream backend sets nothing aside: there is nothing to salvage "
            "(JetStream keeps the replicas; see `relay spool check`)"
        )

    # -- one connection per call --------------------------------------------------------------

    @asynccontextmanager
    async def _session(
        self, doing: str, *, streams_needed: bool = True
    ) -> AsyncIterator[tuple[Client, JetStreamContext]]:
        """A connection for one call; every failure in it becomes SpoolUnreadable (one line)."""
        opts = self.opts
        conn = Connection(opts)
        try:
            nc = await conn.connect(reconnect=False)
        except UserError as exc:  # one line already, server URLs masked
            raise SpoolUnreadable(str(exc)) from None
        try:
            js = nc.jetstream(timeout=REQUEST_TIMEOUT)
            if streams_needed:
                await streams.check_all(js, opts)
            yield nc, js
        except SpoolError:
            raise
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            raise SpoolUnreadable(
                f"cannot {doing} JetStream stream {opts.stream} at {servers_text(opts)}: "
                f"{why(exc)}; check that the servers run and a quorum of each stream's "
                "replicas is up (`relay spool check`)"
            ) from None
        finally:
            await conn.close()


# -- reading streams ------------------------------------------------------------------------------


def _dead_letter_streams(opts: JetStreamOptions) -> tuple[tuple[str, str], tuple[str, str]]:
    return (opts.dlq_stream, opts.dlq_subject), (opts.invalid_stream, opts.invalid_subject)


async def _next(js: JetStreamContext, stream: str, subject: str, seq: int) -> RawStreamMsg | None:
    """The first message of `stream` at sequence `seq` or after it, or None."""
    try:
        # by subject: nats-py asks for the next message only with one (else the exact `seq`)
        return await js.get_msg(stream, max(seq, 1), subject=subject, next=True)
    except NotFoundError:
        return None


async def _walk(js: JetStreamContext, stream: str, subject: str) -> AsyncIterator[RawStreamMsg]:
    """The messages of `stream` in order, up to its last one when the walk began (relays may
    append all the while: a walk that followed them might never end)."""
    state = (await js.stream_info(stream)).state
    seq = state.first_seq
    while seq <= state.last_seq:
        msg = await _next(js, stream, subject, seq)
        if msg is None or msg.seq is None or msg.seq > state.last_seq:
            return
        yield msg
        seq = msg.seq + 1


def replay_id(stream: str, record: DeadLetterRecord) -> str:
    """The msg id a replay of `record` is published with."""
    return f"replay:{stream}:{record.id}:{int(record.dead_at * 1e6)}"


async def _scan(js: JetStreamContext, stream: str, subject: str) -> AsyncIterator[RawStreamMsg]:
    """Every message of `stream` up to its last one when the scan began, in no promised order:
    `_walk`, but about three times faster on a stream with few gaps, by asking for SCAN_WIDTH
    sequences at once (nats-py parsing each answer is what takes the time, not the server)."""
    state = (await js.stream_info(stream)).state
    if (state.num_deleted or 0) > state.messages:
        async for msg in _walk(js, stream, subject):  # mostly gaps: each get would miss
            yield msg
        return

    async def get(seq: int) -> RawStreamMsg | None:
        try:
            return await js.get_msg(stream, seq)
        except NotFoundError:
            return None  # acked, replayed or purged meanwhile, or a gap

    for start in range(max(state.first_seq, 1), state.last_seq + 1, SCAN_WIDTH):
        stop = min(start + SCAN_WIDTH, state.last_seq + 1)
        for msg in await asyncio.gather(*(get(seq) for seq in range(start, stop))):
            if msg is not None:
                yield msg


def _record(msg: RawStreamMsg, invalid: bool) -> DeadLetterRecord:
    return records.dead_letter_record(
        msg.seq or 0, invalid, msg.headers, msg.data or b"", records.stream_time(msg.time)
    )


async def _dead_letters(
    js: JetStreamContext, opts: JetStreamOptions
) -> AsyncIterator[DeadLetterRecord]:
    """The dead letters of both streams, oldest first (each stream is in the order they died:
    the two are merged), read only as far as the caller takes them."""
    walks = [
        _walk(js, opts.dlq_stream, opts.dlq_subject),
        _walk(js, opts.invalid_stream, opts.invalid_subject),
    ]
    try:
        heads: list[DeadLetterRecord | None] = []
        for invalid, walk in enumerate(walks):
            msg = await anext(walk, None)
            heads.append(_record(msg, bool(invalid)) if msg is not None else None)
        while True:
            present = [(head.dead_at, i, head) for i, head in enumerate(heads) if head is not None]
            if not present:
                return
            _, i, record = min(present)
            # advance before yielding: the caller may delete this one (a replay)
            msg = await anext(walks[i], None)
            heads[i] = _record(msg, bool(i)) if msg is not None else None
            yield record
    finally:
        for walk in walks:
            await walk.aclose()


async def _these(
    js: JetStreamContext, opts: JetStreamOptions, ids: Sequence[int], skipped: dict[int, str]
) -> AsyncIterator[DeadLetterRecord]:
    """The dead letters of `ids` in the order of their ids; unknown ones noted in `skipped`."""
    for dl_id in sorted(set(ids)):
        seq, invalid = records.split_dead_letter_id(dl_id)
        stream = opts.invalid_stream if invalid else opts.dlq_stream
        msg = None
        if seq >= 1:
            try:
                msg = await js.get_msg(stream, seq)
            except NotFoundError:
                msg = None
        if msg is None:
            skipped[dl_id] = "no such dead letter"
            continue
        yield _record(msg, invalid)


async def _replay(
    js: JetStreamContext, opts: JetStreamOptions, record: DeadLetterRecord, body: bytes
) -> str | None:
    """Queue `body` as a new event, then delete the dead letter; None, or why the queue
    refused it (the dead letter stays)."""
    # A fixed id per dead letter, not the event's digest: the digest would be dropped as a
    # duplicate within spool.dedup_window (the event was stored once already), while this id
    # makes a replay that died before the delete below, and ran again, store the event once.
    # the dead letter's time too: a dead-letter stream made again restarts its sequences
    msg_id = replay_id(opts.stream, record)
    try:
        await js.publish(
            opts.subject,
            body,
            headers=records.event_headers(record.source, msg_id),
        )
    except APIError as exc:
        return (
            f"the queue refused it ({why(exc)}); the rest were not tried: "
            "replay again once delivery has made room"
        )
    # only after the PubAck: a dead letter is never gone before its event is stored
    seq, invalid = records.split_dead_letter_id(record.id)
    # NotFound: a replay running at the same time deleted it; the msg id stored it once
    with suppress(NotFoundError):
        await js.delete_msg(opts.invalid_stream if invalid else opts.dlq_stream, seq)
    return None


async def _first_not_before(
    js: JetStreamContext, stream: str, subject: str, state: StreamState, cutoff: float
) -> int:
    """The sequence of the first message that died at `cutoff` or later (last_seq + 1 when
    none did). A dead-letter stream is appended in time order, so a binary search over the
    sequences finds it with a few reads instead of reading every dead letter."""
    lo, hi = state.first_seq, state.last_seq + 1
    while lo < hi:
        mid = (lo + hi) // 2
        msg = await _next(js, stream, subject, mid)
        seq = msg.seq if msg is not None else None
        if seq is not None and seq <= state.last_seq and records.stream_time(msg.time) < cutoff:
            lo = seq + 1
        else:
            hi = mid
    return lo


async def _purge_before(nc: Client, stream: str, keep: int) -> int:
    """Delete the messages of `stream` before sequence `keep`; how many were deleted.

    A request of its own: nats-py's purge_stream does not return the server's count, and a
    count taken from stream infos would include what relays added or replays removed."""
    msg = await nc.request(
        f"$JS.API.STREAM.PURGE.{stream}", json.dumps({"seq": keep}).encode(), REQUEST_TIMEOUT
    )
    answer = json.loads(msg.data)
    if "error" in answer:
        raise SpoolUnreadable(
            f"cannot purge dead letters of stream {stream}: "
            f"{one_line(str(answer['error'].get('description')))}"
        )
    return int(answer.get("purged", 0))
