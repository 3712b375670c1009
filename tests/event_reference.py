"""relay.event.normalise as it was before values were remembered between calls (commit ca27a34):
the plain statement of the rules, kept as the reference the faster one must match exactly."""

from __future__ import annotations

from datetime import datetime

from relay import event as ev
from relay.event import EventError


def _is_digits(value: str, n: int) -> bool:
    return len(value) == n and value.isascii() and value.isdigit()


def _check_datetime(out: dict, field: str) -> None:
    value = out.get(field)
    if value is None:
        return
    if type(value) is not str:
        raise EventError(f"{field} must be a string")
    if ev._DATETIME.fullmatch(value) is not None:
        try:
            datetime.fromisoformat(value)
            return
        except ValueError:
            pass
    raise EventError(f"{field} ({ev._show(value)}) is not an ISO 8601 date-time")


def normalise(obj: object) -> dict:
    if not isinstance(obj, dict):
        raise EventError("event must be a JSON object")
    out = dict(obj)
    get = out.get

    for field in ev._REQUIRED:
        value = get(field)
        if type(value) is not str:
            if value is None:
                raise EventError(f"{field} is required")
            raise EventError(f"{field} must be a string")
        if not value:
            raise EventError(f"{field} is required")

    status = out["status"]
    if status not in ev._STATUS_SET:
        raise EventError(f"status {ev._show(status)!r} is not one of {ev._STATUS_LIST}")

    uuid = ev._UUID.fullmatch
    if uuid(out["message_id"]) is None or uuid(out["conversation_id"]) is None:
        raise EventError("message_id and conversation_id must be of type UUID")

    orgnr = out["orgnr"]
    if not _is_digits(orgnr, 9):
        raise EventError(f"orgnr ({ev._show(orgnr)}) must be 9 digits")

    sender = out["sender"]
    m = ev._ISO6523.fullmatch(sender)
    if m is None:
        raise EventError(f"Sender field ({ev._show(sender)}) is not valid ISO6523 format.")
    out["sender_org_number"] = m.group(2)

    receiver = get("receiver")
    if receiver is not None:
        if type(receiver) is not str:
            raise EventError("receiver must be a string")
        if _is_digits(receiver, 11):
            receiver = ev.hash_personal_number(receiver)
            out["receiver"] = receiver
            out["receiver_org_number"] = receiver
        elif (m := ev._ISO6523.fullmatch(receiver)) is not None:
            out["receiver_org_number"] = m.group(2)
        elif _is_digits(receiver, 9) or ev._HASHED.fullmatch(receiver) is not None:
            out["receiver_org_number"] = receiver
        else:
            raise EventError(f"Receiver field ({ev._show(receiver)}) is not valid ISO6523 format.")
    else:
        given = get("receiver_org_number")
        if given is not None:
            if type(given) is not str:
                raise EventError("receiver_org_number must be a string")
            if _is_digits(given, 11):
                out["receiver_org_number"] = ev.hash_personal_number(given)

    _check_datetime(out, "@timestamp")
    _check_datetime(out, "timestamp")

    logger_name = get("logger_name")
    if logger_name is None:
        out["logger_name"] = "STATUS"
    elif type(logger_name) is not str:
        raise EventError("logger_name must be a string")

    for key, value in out.items():
        if not (type(key) is str and type(value) is str and key.isascii() and value.isascii()):
            ev._check_item(key, value)
    return out
