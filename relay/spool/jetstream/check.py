"""The full consistency check of a jetstream spool (`relay spool check`): the streams, consumer
and bucket of the design (`relay.spool.jetstream`) are there with its settings, each has a
leader and no replica offline, and the consumer holds no message its stream no longer has."""

from __future__ import annotations

from typing import Any

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import ClusterInfo
from nats.js.errors import APIError, NotFoundError

from relay.errors import one_line
from relay.spool.jetstream import streams
from relay.spool.jetstream.connect import masked
from relay.spool.jetstream.options import JetStreamOptions

# reads of the consumer and its stream that must see the consumer unchanged in between before
# their counts are compared; relays acking meanwhile make a pair unusable
CONSISTENT_READS = 5
# a replica not current and not heard from for longer than this (seconds) is reported
SILENT_REPLICA = 10.0


async def check_layout(js: JetStreamContext, opts: JetStreamOptions, max_bytes: int) -> list[str]:
    """Problems found, one line each; [] when sound. A missing stream is one of them."""
    problems: list[str] = []
    wanted = (
        # dedup_window 0: the admin is not told spool.dedup_window, so it is not compared
        streams.queue_config(opts, max_bytes, 0),
        streams.dead_letter_config(opts, max_bytes, invalid=False),
        streams.dead_letter_config(opts, max_bytes, invalid=True),
    )
    for want in wanted:
        info = await _stream_info(js, want.name, problems)
        if info is not None:
            problems += [
                f"stream {want.name}: {difference}"
                for difference in streams._differences(want, info.config)
            ]
            problems += _cluster_problems(f"stream {want.name}", info.cluster)
    problems += await _check_consumer(js, opts)
    bucket = f"KV_{opts.attempts_bucket}"
    info = await _stream_info(js, bucket, problems, what="key-value bucket")
    if info is not None:
        problems += _cluster_problems(f"key-value bucket {bucket}", info.cluster)
    return problems


async def _stream_info(
    js: JetStreamContext, name: str, problems: list[str], what: str = "stream"
) -> Any:
    """The stream's info, or None with the reason added to `problems`."""
    try:
        return await js.stream_info(name)
    except NotFoundError:
        problems.append(f"{what} {name} does not exist: a relay creates it when it starts")
    except (APIError, nats.errors.TimeoutError) as exc:
        problems.append(
            f"{what} {name} cannot be read ({why(exc)}): a quorum of its replicas may be down"
        )
    return None


def _cluster_problems(what: str, cluster: ClusterInfo | None) -> list[str]:
    if cluster is None:
        return []  # a single server without clustering: nothing to say about replicas
    problems = []
    if not cluster.leader:
        problems.append(f"{what} has no leader: a quorum of its replicas is not up")
    for peer in cluster.replicas or []:
        # the server marks a replica offline only long after it went away; until then it is
        # "not current" and its last activity ages (a busy replica lags too, but not for long)
        silent = (peer.active or 0) / 1e9
        if peer.offline:
            problems.append(f"{what}: its replica on server {peer.name} is offline")
        elif not peer.current and silent > SILENT_REPLICA:
            problems.append(
                f"{what}: its replica on server {peer.name} is offline or cut off "
                f"(last heard from {silent:.0f} s ago)"
            )
    return problems


async def _check_consumer(js: JetStreamContext, opts: JetStreamOptions) -> list[str]:
    what = f"consumer {opts.consumer} on stream {opts.stream}"
    try:
        first = await js.consumer_info(opts.stream, opts.consumer)
    except NotFoundError:
        return [f"{what} does not exist: a relay creates it when it starts"]
    except (APIError, nats.errors.TimeoutError) as exc:
        return [f"{what} cannot be read ({why(exc)}): a quorum of its replicas may be down"]
    problems = _cluster_problems(what, first.cluster)
    config = first.config
    ack_policy = getattr(config.ack_policy, "value", config.ack_policy)
    if config.filter_subject != opts.subject or ack_policy != "explicit":
        problems.append(
            f"{what} has filter subject {config.filter_subject!r} and ack policy {ack_policy}; "
            f"the relay needs {opts.subject!r} with explicit acks"
        )
    # Held messages are still in the work-queue stream (it deletes a message on its ack), so
    # more held than stored means messages vanished under the consumer. Relays ack all the
    # while: only a pair of reads with the consumer unchanged around the stream's is compared.
    for _ in range(CONSISTENT_READS):
        state = (await js.stream_info(opts.stream)).state
        after = await js.consumer_info(opts.stream, opts.consumer)
        if _position(after) == _position(first):
            pending = after.num_ack_pending or 0
            if pending > state.messages:
                problems.append(
                    f"{what} holds {pending} unacknowledged message(s), the stream has only "
                    f"{state.messages}: messages were deleted under it"
                )
            break
        first = after
    return problems


def _position(info: Any) -> tuple[Any, ...]:
    return (
        info.num_ack_pending,
        info.delivered.stream_seq if info.delivered else None,
        info.ack_floor.stream_seq if info.ack_floor else None,
    )


def why(exc: BaseException) -> str:
    """An error from nats-py as a short phrase: the server's description for API errors (their
    text is a dump of fields), server URLs masked in any other."""
    if isinstance(exc, APIError) and exc.description:
        return masked(one_line(str(exc.description)))
    if isinstance(exc, NotFoundError):
        return "not found"
    return masked(one_line(str(exc))) or type(exc).__name__
