"""The streams, consumer and bucket of the design (see `relay.spool.jetstream`): created when
missing, checked when present. A relay never changes a shared stream's settings: a difference
stops start-up with one line naming it, since the other relays on that stream rely on them."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    wait_fixed,
)

from relay.errors import UserError, one_line
from relay.spool.api import INVALID_SHARE, SpoolUnreadable
from relay.spool.jetstream.options import JetStreamOptions

log = logging.getLogger("relay.spool.jetstream")

DEAD_LETTER_DUPLICATE_WINDOW = 3600.0
ATTEMPTS_MAX_AGE = 8 * 86400.0  # beyond the longest retry delay (api.MAX_DELAY, 7 days)


def queue_config(opts: JetStreamOptions, max_bytes: int, dedup_window: float) -> StreamConfig:
    return StreamConfig(
        name=opts.stream,
        subjects=[opts.subject],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        max_bytes=max_bytes,
        # 0 would mean the server's default (2 minutes): without a window the relay sends no
        # Nats-Msg-Id, so the stream's window then does nothing
        duplicate_window=dedup_window if dedup_window > 0 else 0,
        num_replicas=opts.replicas,
        allow_direct=True,
    )


def dead_letter_config(opts: JetStreamOptions, max_bytes: int, invalid: bool) -> StreamConfig:
    return StreamConfig(
        name=opts.invalid_stream if invalid else opts.dlq_stream,
        subjects=[opts.invalid_subject if invalid else opts.dlq_subject],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        max_bytes=int(max_bytes * INVALID_SHARE) if invalid else max_bytes,
        duplicate_window=DEAD_LETTER_DUPLICATE_WINDOW,
        num_replicas=opts.replicas,
        allow_direct=True,
    )


def consumer_config(opts: JetStreamOptions) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=opts.consumer,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=opts.ack_wait,
        max_deliver=-1,
        filter_subject=opts.subject,
        max_ack_pending=opts.max_ack_pending,
        # one relay's fetches never block another's: a waiting pull request per relay and
        # some for the admin's reads
        max_waiting=512,
    )


# (field, how the operator sets it) of what must agree between the configuration and a stream
_CHECKED = (
    ("subjects", "spool.jetstream.subject"),
    ("retention", "the design (work-queue for the queue, limits for dead letters)"),
    ("storage", "the design (file storage)"),
    ("discard", "the design (discard new)"),
    ("max_bytes", "spool.max_bytes"),
    ("duplicate_window", "spool.dedup_window"),
    ("num_replicas", "spool.jetstream.replicas"),
)


def _differences(want: StreamConfig, have: StreamConfig) -> list[str]:
    out = []
    for name, setting in _CHECKED:
        wanted, found = getattr(want, name), getattr(have, name)
        if name == "duplicate_window" and not wanted:
            continue  # no dedup: the stream's window is not used
        if name == "duplicate_window":
            same = abs(float(found or 0) - float(wanted)) < 1e-3
        else:
            same = _plain(found) == _plain(wanted)
        if not same:
            out.append(f"{name} is {_plain(found)}, {setting} asks for {_plain(wanted)}")
    return out


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)


async def ensure_stream(js: JetStreamContext, want: StreamConfig) -> None:
    """Create the stream, or check that the one there has the settings the relay relies on."""
    try:
        info = await js.stream_info(want.name)
    except NotFoundError:
        await js.add_stream(want)
        log.info(
            "created JetStream stream %s (%s replicas, max_bytes %s)",
            want.name,
            want.num_replicas,
            want.max_bytes,
        )
        return
    differences = _differences(want, info.config)
    if differences:
        raise UserError(
            f"JetStream stream {want.name} exists with other settings: "
            f"{'; '.join(differences)}; change the configuration to match, or change the "
            "stream for every relay that shares it (nats stream edit) and restart them"
        )


async def ensure_consumer(js: JetStreamContext, opts: JetStreamOptions) -> None:
    want = consumer_config(opts)
    try:
        info = await js.consumer_info(opts.stream, opts.consumer)
    except NotFoundError:
        await js.add_consumer(opts.stream, want)
        log.info("created JetStream consumer %s on %s", opts.consumer, opts.stream)
        return
    have = info.config
    if have.filter_subject != opts.subject or _plain(have.ack_policy) != "explicit":
        raise UserError(
            f"JetStream consumer {opts.consumer} on {opts.stream} exists with filter subject "
            f"{have.filter_subject!r} and ack policy {_plain(have.ack_policy)}; the relay needs "
            f"{opts.subject!r} with explicit acks: delete the consumer or name another "
            "(spool.jetstream.consumer)"
        )
    # relays sharing the consumer may disagree on these (another request_timeout or
    # max_in_flight): the larger wins, so no relay's leases time out under it
    ack_wait = max(float(have.ack_wait or 0), opts.ack_wait)
    pending = max(int(have.max_ack_pending or 0), opts.max_ack_pending)
    if ack_wait != have.ack_wait or pending != have.max_ack_pending:
        want.ack_wait, want.max_ack_pending = ack_wait, pending
        await js.add_consumer(opts.stream, want)
        log.info(
            "updated JetStream consumer %s: ack_wait %.0f s, max_ack_pending %d",
            opts.consumer,
            ack_wait,
            pending,
        )


async def ensure_all(
    js: JetStreamContext, opts: JetStreamOptions, max_bytes: int, dedup_window: float
) -> None:
    """Everything the design names, so that the first append or lease finds it in place.

    A cluster that is still forming (started together with the relay, say) answers with
    timeouts or "temporarily unavailable" for a while: that is waited out, up to
    `SETUP_PATIENCE` x connect_timeout, with one log line; a wrong setting is not."""
    said: list[str] = []

    def say_once(state: RetryCallState) -> None:
        if not said and state.outcome is not None:
            said.append(_why(state.outcome.exception()))
            log.warning("JetStream is not ready yet (%s); waiting for it", said[0])

    retrying = AsyncRetrying(
        stop=stop_after_delay(SETUP_PATIENCE * opts.connect_timeout),
        wait=wait_fixed(0.5),
        retry=retry_if_exception(_transient),
        before_sleep=say_once,
        reraise=True,
    )
    try:
        await retrying(_ensure_all_once, js, opts, max_bytes, dedup_window)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(
            f"cannot set up JetStream stream {opts.stream}: {_why(exc)}"
            "; check that the servers have JetStream enabled and a quorum up, and that "
            "the credentials allow managing streams"
        ) from None


def _why(exc: BaseException | None) -> str:
    return one_line(str(exc)) or type(exc).__name__


SETUP_PATIENCE = 6


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, UserError):
        return False  # a setting that does not match: waiting does not change it
    if isinstance(exc, TimeoutError):
        return True
    code = getattr(exc, "code", None)
    text = str(exc).lower()
    return code in (503, 408) or "temporarily unavailable" in text or "no responders" in text


async def _ensure_all_once(
    js: JetStreamContext, opts: JetStreamOptions, max_bytes: int, dedup_window: float
) -> None:
    await ensure_stream(js, queue_config(opts, max_bytes, dedup_window))
    await ensure_stream(js, dead_letter_config(opts, max_bytes, invalid=False))
    await ensure_stream(js, dead_letter_config(opts, max_bytes, invalid=True))
    await ensure_consumer(js, opts)
    await js.create_key_value(
        KeyValueConfig(
            bucket=opts.attempts_bucket,
            history=1,
            ttl=ATTEMPTS_MAX_AGE,
            storage=StorageType.FILE,
            replicas=opts.replicas,
        )
    )


async def wait_for_leaders(js: JetStreamContext, opts: JetStreamOptions, timeout: float) -> None:
    """A stream or consumer just created elects its leader in a moment; until then a pull
    request or publish goes unanswered. Wait for both (or give up quietly: health reports it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            stream = await js.stream_info(opts.stream)
            consumer = await js.consumer_info(opts.stream, opts.consumer)
        except Exception:  # not answering yet: ask again
            stream = consumer = None
        if (
            stream is not None
            and consumer is not None
            and (stream.cluster is None or stream.cluster.leader)
            and (consumer.cluster is None or consumer.cluster.leader)
        ):
            return
        await asyncio.sleep(0.05)


async def check_all(js: JetStreamContext, opts: JetStreamOptions) -> None:
    """For the CLI: the streams must be there (it never creates them); one line when not."""
    for name in (opts.stream, opts.dlq_stream, opts.invalid_stream):
        try:
            await js.stream_info(name)
        except NotFoundError:
            raise SpoolUnreadable(
                f"JetStream stream {name} does not exist: no relay has run with this "
                "spool.jetstream configuration (check stream and servers)"
            ) from None
