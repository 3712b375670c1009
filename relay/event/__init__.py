"""Validation and canonical form of one eFormidling status event.

The rules are those of the national status service's HTTP path (efm-kafka-status-proxy: the
Kotlin data class ``StatusMessage`` bound by Spring Boot's Jackson, then ``MessageProcessor``),
so the relay refuses at ingest, with the service's own words where it has them, what the service
would refuse, and accepts what it accepts. ``tests/event/test_event_parity.py`` lists every rule
with its source. Where the relay is stricter on purpose, the table says why.
"""

from __future__ import annotations

import re

import orjson

from relay.event.local_datetime import binds_as_local_datetime
from relay.event.text import (
    PERSONAL_NUMBER,
    EventError,
    NotStatusError,
    check_item,
    hash_personal_number,
    show,
)
from relay.event.text import scrub as scrub_personal_numbers

__all__ = [
    "STATUSES",
    "STATUS_LOGGER",
    "EventError",
    "NotStatusError",
    "decode",
    "encode",
    "hash_personal_number",
    "normalise",
    "not_status",
    "other_logger",
    "parse",
    "scrub_personal_numbers",
]

STATUSES: tuple[str, ...] = (
    "OPPRETTET",
    "SENDT",
    "MOTTATT",
    "LEVERT",
    "LEST",
    "FEIL",
    "ANNET",
    "INNKOMMENDE_MOTTATT",
    "INNKOMMENDE_LEVERT",
    "LEVETID_UTLOPT",
)
STATUS_LOGGER = "STATUS"
_STATUS_SET = frozenset(STATUSES)
_STATUS_LIST = ", ".join(STATUSES)

# StatusMessage's non-null fields without a default: missing or null fails binding (400).
# An empty string binds (only conversation_id and status are checked further).
_REQUIRED = ("status", "conversation_id", "orgnr", "process_identifier", "service_identifier")
# Its String fields, all non-null: those with a default may be left out, never be null.
_TEXT_FIELDS = frozenset(
    (
        *_REQUIRED,
        "message_id",
        "document_identifier",
        "sender",
        "receiver",
        "receiver_org_number",
        "sender_org_number",
        "logger_name",
        "loglevel",
    )
)

# MessageProcessor.kt's patterns. Digits are ASCII only ([0-9]): a bare \d would also accept
# e.g. Arabic-Indic digits, which the Java regex does not.
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_ISO6523 = re.compile(r"([0-9]{4}:)([0-9]{9})(?::)?([0-9]{9})?", re.ASCII)


def _bad_text(field: str, value: object) -> EventError:
    """The refusal of a non-string in one of StatusMessage's String fields."""
    if value is None:
        return EventError(
            f"{field} is null: the status service refuses null in this field"
            " (leave the field out instead)"
        )
    return EventError(f"{field} must be a string")


def _check_item(key: object, value: object) -> None:
    if type(value) is not str and key in _TEXT_FIELDS:
        raise _bad_text(key, value)  # type: ignore[arg-type]
    check_item(key, value)


# Values that repeat from event to event (a producer's sender and its receivers) are checked
# once and then remembered. Bounded, and emptied when full, since a producer can send any number
# of distinct values. Personal numbers are never kept: a receiver holding one is scrubbed on
# every use.
_KNOWN_MAX = 1024
# A receiver is free text: only short ones are kept, so the caches hold at most ~64 KiB of text
# whatever producers send (senders are short by their pattern).
_KNOWN_LEN = 64
_known_senders: dict[str, str] = {}  # sender -> sender_org_number
_known_receivers: dict[str, str] = {}  # receiver without a personal number -> its org number


def _remember(cache: dict) -> None:
    if len(cache) >= _KNOWN_MAX:
        cache.clear()


def _sender_org_number(sender: str) -> str:
    m = _ISO6523.fullmatch(sender)
    if m is None:
        raise EventError(f"Sender field ({show(sender)}) is not valid ISO6523 format.")
    # The service keeps the last non-blank group: the part identifier when there is one,
    # else the organisation number. ("Range for ISO6523 not supported" cannot happen once the
    # pattern matched: there are always 3 or 4 such groups.)
    org = m.group(3) or m.group(2)
    _remember(_known_senders)
    _known_senders[sender] = org
    return org


def _receiver(receiver: str) -> tuple[str, str]:
    """(receiver, receiver_org_number) for a receiver that is not exactly a personal number."""
    if (m := _ISO6523.fullmatch(receiver)) is not None:
        # For the receiver the service takes the organisation number, even with a part.
        org = m.group(2)
    elif PERSONAL_NUMBER.search(receiver) is None:
        # The service takes any other receiver as its own receiver_org_number.
        org = receiver
    else:
        # The relay's own rule: a personal number never reaches the disk in clear.
        receiver = scrub_personal_numbers(receiver)
        return receiver, receiver
    if len(receiver) <= _KNOWN_LEN:
        _remember(_known_receivers)
        _known_receivers[receiver] = org
    return receiver, org


def _is_digits(value: str, n: int) -> bool:
    return len(value) == n and value.isascii() and value.isdigit()


def normalise(obj: object) -> dict:
    """Validate and normalise one decoded JSON value; return a NEW dict. Raise only EventError."""
    if not isinstance(obj, dict):
        raise EventError("event must be a JSON object")
    out = dict(obj)
    get = out.get

    for field in _REQUIRED:
        value = get(field)
        if type(value) is not str:
            if value is None:
                raise EventError(f"{field} is required")
            raise EventError(f"{field} must be a string")

    status = out["status"]
    if status not in _STATUS_SET:
        raise EventError(f"status {show(status)!r} is not one of {_STATUS_LIST}")

    sender = get("sender", "")
    if type(sender) is not str:
        raise _bad_text("sender", sender)
    given = get("sender_org_number", "")
    if type(given) is not str:
        raise _bad_text("sender_org_number", given)
    org = _known_senders.get(sender)
    out["sender_org_number"] = org if org is not None else _sender_org_number(sender)

    message_id = get("message_id", "")
    if type(message_id) is not str:
        raise _bad_text("message_id", message_id)
    if _UUID.fullmatch(message_id) is None or _UUID.fullmatch(out["conversation_id"]) is None:
        raise EventError("message_id and conversation_id must be of type UUID")

    receiver = get("receiver")
    if receiver is not None:
        if type(receiver) is not str:
            raise EventError("receiver must be a string")
        given = get("receiver_org_number", "")
        if type(given) is not str:
            raise _bad_text("receiver_org_number", given)
        org = _known_receivers.get(receiver)
        if org is not None:
            out["receiver_org_number"] = org
        elif _is_digits(receiver, 11):
            # What the integrasjonspunkt does with a DPI receiver's personal number.
            out["receiver"] = out["receiver_org_number"] = hash_personal_number(receiver)
        else:
            out["receiver"], out["receiver_org_number"] = _receiver(receiver)
    elif "receiver" in out:
        raise _bad_text("receiver", None)
    else:
        given = get("receiver_org_number")
        # A non-string could hide a personal number (e.g. as a JSON number) from the hashing
        # below; a null is refused by the last loop.
        if given is not None:
            if type(given) is not str:
                raise EventError("receiver_org_number must be a string")
            if _is_digits(given, 11):
                out["receiver_org_number"] = hash_personal_number(given)

    if "timestamp" in out:
        value = out["timestamp"]
        if type(value) is not str:
            if value is None:
                raise _bad_text("timestamp", None)
            raise EventError("timestamp must be a string")
        if not binds_as_local_datetime(value):
            raise EventError(
                f"timestamp ({show(value)}) is not a local date-time the status service can"
                " read, such as 2022-08-10T00:11:27.246 (a trailing Z is allowed, no other offset)"
            )

    logger_name = get("logger_name")
    if logger_name is None:
        if "logger_name" in out:
            raise _bad_text("logger_name", None)
        out["logger_name"] = STATUS_LOGGER
    elif type(logger_name) is not str:
        raise EventError("logger_name must be a string")
    elif logger_name != STATUS_LOGGER:
        raise not_status(logger_name)

    # Last, so that the rules above report first; this is what keeps encode() total.
    # Nearly every item is an ASCII string key with an ASCII string value: one test each.
    for key, value in out.items():
        if not (type(key) is str and type(value) is str and key.isascii() and value.isascii()):
            _check_item(key, value)
    return out


def other_logger(value: object) -> str | None:
    """The `logger_name` of a decoded object that names another logger than STATUS, else None.

    Sources that read application logs look at this before validating: such a line is a log
    line, whatever else is wrong with it."""
    if isinstance(value, dict):
        name = value.get("logger_name")
        if isinstance(name, str) and name != STATUS_LOGGER:
            return name
    return None


def not_status(logger_name: str) -> NotStatusError:
    """The refusal of an event that names another logger than STATUS."""
    return NotStatusError(
        f'logger_name must be "STATUS" (got "{show(logger_name)}"): the status service'
        " acknowledges other loggers and then files them as general logs, not statuses"
    )


def decode(raw: bytes | str) -> object:
    """orjson-decode; raise EventError("body is not valid JSON: <short reason>") on failure."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        # orjson also reports a wrong input type and its 1024-level depth limit this way.
        raise EventError(f"body is not valid JSON: {show(err.msg)}") from None


def parse(raw: bytes | str) -> dict:
    """decode + normalise."""
    return normalise(decode(raw))


def encode(event: dict) -> bytes:
    """Canonical bytes of a normalised event: sorted keys, no whitespace (the dedup identity)."""
    try:
        return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as err:
        raise EventError(f"event cannot be encoded as JSON: {show(str(err))}") from None
