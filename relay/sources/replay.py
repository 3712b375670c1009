"""What `relay dlq replay` queues for a dead letter: the event it holds, normalised as ingest
would have stored it. A dead letter may be an event the upstream refused, or raw input kept at
ingest (a JSON body or line, or a whole syslog frame with its header)."""

from __future__ import annotations

from relay import event
from relay.sources.syslog_header import decode_event


def prepare_replay(body: bytes) -> bytes:
    """The canonical event bytes in a dead letter's `body`; raises ValueError (EventError) when
    it holds no valid event: raw input that never was one would only be refused again
    upstream."""
    try:
        value = event.decode(body)
    except event.EventError:
        # a syslog frame keeps its header, so the event is looked for inside it
        value = decode_event(body)
    return event.encode(event.normalise(value))
