"""How an event and a dead letter are written into JetStream messages, and read back: the
headers of the design (`relay.spool.jetstream`), and the dead-letter ids `relay dlq` shows."""

from __future__ import annotations

import json
from datetime import datetime

from relay.spool.api import DeadLetterRecord

SOURCE = "Relay-Source"
DEAD_LETTER = "Relay-Dead-Letter"
MSG_ID = "Nats-Msg-Id"


def event_headers(source: str, msg_id: str | None) -> dict[str, str]:
    headers = {SOURCE: _header_value(source)}
    if msg_id is not None:
        headers[MSG_ID] = msg_id
    return headers


def _header_value(text: str) -> str:
    # a header value is one line of ASCII: JSON's escapes make any text one
    if text.isascii() and text.isprintable():
        return text
    return json.dumps(text)[1:-1]


def dead_letter_headers(
    *,
    source: str,
    event_id: int | None,
    reason: str,
    attempts: int,
    first_error: str | None,
    last_error: str | None,
    received_at: float,
    first_attempt_at: float | None,
    msg_id: str | None = None,
) -> dict[str, str]:
    meta = {
        "event_id": event_id,
        "reason": reason,
        "attempts": attempts,
        "first_error": first_error,
        "last_error": last_error,
        "received_at": received_at,
        "first_attempt_at": first_attempt_at,
    }
    headers = {SOURCE: _header_value(source), DEAD_LETTER: json.dumps(meta, ensure_ascii=True)}
    if msg_id is not None:
        headers[MSG_ID] = msg_id
    return headers


def dead_letter_id(seq: int, invalid: bool) -> int:
    """The id `relay dlq` shows: both dead-letter streams in one space of ids."""
    return 2 * seq + (1 if invalid else 0)


def split_dead_letter_id(dl_id: int) -> tuple[int, bool]:
    """(stream sequence, in the invalid stream) of a dead-letter id."""
    return dl_id // 2, bool(dl_id % 2)


def stream_time(value: datetime | None) -> float:
    """A message's stream time (nats-py gives a datetime) in epoch seconds; 0 when missing."""
    return value.timestamp() if value is not None else 0.0


def dead_letter_record(
    seq: int, invalid: bool, headers: dict[str, str] | None, data: bytes, dead_at: float
) -> DeadLetterRecord:
    headers = headers or {}
    try:
        meta = json.loads(headers.get(DEAD_LETTER, "{}"))
    except ValueError:
        meta = {}
    return DeadLetterRecord(
        id=dead_letter_id(seq, invalid),
        event_id=meta.get("event_id"),
        reason=meta.get("reason") or ("invalid" if invalid else "rejected"),
        source=headers.get(SOURCE, "unknown"),
        attempts=int(meta.get("attempts") or 0),
        first_error=meta.get("first_error"),
        last_error=meta.get("last_error"),
        received_at=float(meta.get("received_at") or dead_at),
        first_attempt_at=meta.get("first_attempt_at"),
        dead_at=dead_at,
        body=data,
    )
