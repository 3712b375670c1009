"""The data of one upstream request."""

from __future__ import annotations

import orjson

# The real service acknowledges a request before it decodes it, then files only JSON objects with
# this logger_name as statuses: anything else is acknowledged and lost (upstream-protocol.md).
_STATUS = "STATUS"


# canonical bytes (orjson, no spaces): inside a string value the quotes would be escaped
_STATUS_MARK = b'"logger_name":"STATUS"'


def request_data(bodies: list[bytes], batch_size: int, accepts_arrays: bool = True) -> bytes:
    """One event as its JSON object; a JSON array of them only with batching on, for an upstream
    that accepts arrays (`upstream.accepts_arrays`; the real service does not)."""
    if len(bodies) == 1 and not (accepts_arrays and batch_size > 1):
        return bodies[0]
    if not accepts_arrays:
        # configuration validation refuses batch_size > 1 without accepts_arrays; never send an
        # array the service would drop, whatever the caller asked
        raise ValueError("an upstream that does not accept arrays gets one event per request")
    return b"[" + b",".join(bodies) + b"]"


def status_data(body: bytes) -> bytes:
    """One event for the real service: its object, sure to say "logger_name": "STATUS". Ingest
    stores events that way, so this is one substring test per request; an older spool's event
    is rewritten."""
    if _STATUS_MARK in body:
        return body
    return status_object(body)


def status_object(body: bytes) -> bytes:
    """`body` as one JSON object with "logger_name": "STATUS" (what the service keeps); a
    ValueError for anything that is not a status object."""
    event = orjson.loads(body)
    if not isinstance(event, dict):
        raise ValueError("an event must be a JSON object")
    name = event.get("logger_name", _STATUS)
    if name != _STATUS:
        # not a status (ingest refuses these now; an older relay spooled them): the service would
        # file it as a general log line, so it is dead-lettered rather than relabelled
        raise ValueError(f"logger_name is {str(name)[:60]!r}, not 'STATUS': not a status event")
    if "logger_name" not in event:
        event["logger_name"] = _STATUS
        return orjson.dumps(event)
    return body
