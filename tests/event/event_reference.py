"""relay.event.normalise without the values it remembers between calls: the plain statement of
the rules (those of the status service's HTTP path, see tests/event/test_event_parity.py), kept as
the reference the faster one must match exactly, error texts included."""

from __future__ import annotations

from relay import event as ev
from relay.event import EventError, NotStatusError
from relay.event.local_datetime import binds_as_local_datetime
from relay.event.text import PERSONAL_NUMBER, scrub, show


def _is_digits(value: str, n: int) -> bool:
    return len(value) == n and value.isascii() and value.isdigit()


def _text(out: dict, field: str) -> str:
    """A defaulted String field of StatusMessage: absent is "", null or another type refused."""
    value = out.get(field, "")
    if type(value) is not str:
        raise ev._bad_text(field, value)
    return value


def normalise(obj: object) -> dict:
    if not isinstance(obj, dict):
        raise EventError("event must be a JSON object")
    out = dict(obj)

    for field in ev._REQUIRED:
        value = out.get(field)
        if type(value) is not str:
            if value is None:
                raise EventError(f"{field} is required")
            raise EventError(f"{field} must be a string")

    status = out["status"]
    if status not in ev.STATUSES:
        raise EventError(f"status {show(status)!r} is not one of {ev._STATUS_LIST}")

    sender = _text(out, "sender")
    _text(out, "sender_org_number")
    m = ev._ISO6523.fullmatch(sender)
    if m is None:
        raise EventError(f"Sender field ({show(sender)}) is not valid ISO6523 format.")
    out["sender_org_number"] = m.group(3) or m.group(2)

    message_id = _text(out, "message_id")
    if ev._UUID.fullmatch(message_id) is None or ev._UUID.fullmatch(out["conversation_id"]) is None:
        raise EventError("message_id and conversation_id must be of type UUID")

    if "receiver" in out:
        receiver = out["receiver"]
        if receiver is None:
            raise ev._bad_text("receiver", None)
        if type(receiver) is not str:
            raise EventError("receiver must be a string")
        _text(out, "receiver_org_number")
        if (m := ev._ISO6523.fullmatch(receiver)) is not None:
            out["receiver_org_number"] = m.group(2)
        else:
            if PERSONAL_NUMBER.search(receiver) is not None:
                receiver = out["receiver"] = scrub(receiver)
            out["receiver_org_number"] = receiver
    else:
        given = out.get("receiver_org_number")
        if given is not None:
            if type(given) is not str:
                raise EventError("receiver_org_number must be a string")
            if _is_digits(given, 11):
                out["receiver_org_number"] = ev.hash_personal_number(given)

    if "timestamp" in out:
        value = out["timestamp"]
        if value is None:
            raise ev._bad_text("timestamp", None)
        if type(value) is not str:
            raise EventError("timestamp must be a string")
        if not binds_as_local_datetime(value):
            raise EventError(
                f"timestamp ({show(value)}) is not a local date-time the status service can"
                " read, such as 2022-08-10T00:11:27.246 (a trailing Z is allowed, no other offset)"
            )

    if "logger_name" not in out:
        out["logger_name"] = "STATUS"
    logger_name = out["logger_name"]
    if logger_name is None:
        raise ev._bad_text("logger_name", None)
    if type(logger_name) is not str:
        raise EventError("logger_name must be a string")
    if logger_name != "STATUS":
        raise NotStatusError(
            f'logger_name must be "STATUS" (got "{show(logger_name)}"): the status service'
            " acknowledges other loggers and then files them as general logs, not statuses"
        )

    for key, value in out.items():
        if type(value) is not str and key in ev._TEXT_FIELDS:
            raise ev._bad_text(key, value)
        ev.check_item(key, value)
    return out
