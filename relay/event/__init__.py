"""Validation and canonical form of one eFormidling status event.

The rules mirror what the national status service checks (see
``shared/reference/upstream-protocol.md``), so an event is rejected here, with the
service's own wording where it has one, instead of being retried upstream forever.
"""

from __future__ import annotations

import hashlib
import math
import re
from datetime import datetime

import orjson

__all__ = [
    "STATUSES",
    "EventError",
    "decode",
    "encode",
    "hash_personal_number",
    "normalise",
    "parse",
    "scrub_personal_numbers",
]


class EventError(ValueError):
    """Validation failure. str(err) is one line: the message the real service would answer."""


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
_STATUS_SET = frozenset(STATUSES)
_STATUS_LIST = ", ".join(STATUSES)

_REQUIRED = (
    "status",
    "conversation_id",
    "message_id",
    "orgnr",
    "process_identifier",
    "service_identifier",
    "sender",
)

# Digits are ASCII only ([0-9] or re.ASCII): a bare \d would also accept e.g. Arabic-Indic
# digits, which the Java service rejects.
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_ISO6523 = re.compile(r"([0-9]{4}:)([0-9]{9})(?::)?([0-9]{9})?", re.ASCII)
_HASHED = re.compile(r"[0-9a-f]{64}")
# Only the shape (extended format, T separator, 1-9 fraction digits, Z or +hh:mm) is
# checked here; datetime.fromisoformat then rejects impossible values such as Feb 30.
_DATETIME = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d(?::\d\d(?:\.\d{1,9})?)?(?:Z|[+-]\d\d:\d\d)?", re.ASCII
)
# Eleven digits standing alone: not a part of a longer number, nor of a hex string such as a
# UUID (whose groups can hold eleven digits in a row by chance).
_PERSONAL_NUMBER = re.compile(r"(?<![0-9A-Za-z])[0-9]{11}(?![0-9A-Za-z])")

# Everything str.splitlines() would split on, so an echoed value can never break a log line.
_ONE_LINE = str.maketrans(dict.fromkeys("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029", " "))
_SHOW_MAX = 100

# orjson.dumps gives up beyond 254 nested containers and on integers outside
# [-2**63, 2**64); checking here keeps encode() total for every normalised event.
_MAX_DEPTH = 100
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1


def hash_personal_number(value: str) -> str:
    """SHA-256 hex digest of ``value``, the form in which a personal number may be stored."""
    # surrogatepass only matters for lone surrogates, which valid text never has.
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def _hash_match(m: re.Match[str]) -> str:
    return hash_personal_number(m.group())


def scrub_personal_numbers(text: str) -> str:
    """Replace every run of exactly 11 ASCII digits by its SHA-256 hex digest."""
    return _PERSONAL_NUMBER.sub(_hash_match, text)


def _show(value: str) -> str:
    """A user value made safe to echo: no personal number, short, one line, encodable."""
    # Scrub before the final cut: cutting first could leave part of a personal number,
    # too short for the scrubber to recognise. The first cut only bounds the work.
    text = scrub_personal_numbers(value[: _SHOW_MAX * 2])
    if len(text) > _SHOW_MAX:
        text = text[: _SHOW_MAX - 3] + "..."
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.translate(_ONE_LINE)


def _is_digits(value: str, n: int) -> bool:
    return len(value) == n and value.isascii() and value.isdigit()


def _check_text(field: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise EventError(f"{_show(field)} contains a lone surrogate (not valid text)") from None


def _check_json(field: str, value: object, depth: int) -> None:
    """Raise unless ``value`` is plain JSON that orjson can encode back unchanged."""
    t = type(value)
    if t is str:
        if not value.isascii():
            _check_text(field, value)
    elif value is None or t is bool:
        pass
    elif t is int:
        if not _INT_MIN <= value <= _INT_MAX:
            raise EventError(f"{_show(field)} holds an integer outside the 64-bit range")
    elif t is float:
        if not math.isfinite(value):
            raise EventError(f"{_show(field)} holds a number that is not finite")
    elif t is list or t is dict:
        if depth > _MAX_DEPTH:
            raise EventError(f"{_show(field)} is nested more than {_MAX_DEPTH} levels deep")
        if t is dict:
            for k, v in value.items():
                if type(k) is not str:
                    raise EventError(f"{_show(field)} holds an object key that is not a string")
                if not k.isascii():
                    _check_text(field, k)
                _check_json(field, v, depth + 1)
        else:
            for v in value:
                _check_json(field, v, depth + 1)
    else:
        raise EventError(f"{_show(field)} holds a value that is not JSON ({t.__name__})")


def _check_item(key: object, value: object) -> None:
    if type(key) is not str:
        raise EventError("event keys must be strings")
    if not key.isascii():
        _check_text(f"field name {key!r}", key)
    _check_json(key, value, 1)


def _check_datetime(out: dict, field: str) -> None:
    value = out.get(field)
    if value is None:
        return
    if type(value) is not str:
        raise EventError(f"{field} must be a string")
    if _DATETIME.fullmatch(value) is not None:
        try:
            datetime.fromisoformat(value)
            return
        except ValueError:
            pass
    raise EventError(f"{field} ({_show(value)}) is not an ISO 8601 date-time")


# Values that repeat from event to event (a producer's sender, its receivers, its organisation
# number) are checked once and then remembered. Bounded, and emptied when full, since a producer
# can send any number of distinct values. Personal numbers are never kept: an 11-digit receiver
# is hashed on every use.
_KNOWN_MAX = 1024
_known_senders: dict[str, str] = {}  # sender -> sender_org_number
_known_receivers: dict[str, str] = {}  # receiver, not a personal number -> receiver_org_number
_known_orgnrs: set[str] = set()


def _remember(cache: dict | set) -> None:
    if len(cache) >= _KNOWN_MAX:
        cache.clear()


def _sender_org_number(sender: str) -> str:
    m = _ISO6523.fullmatch(sender)
    if m is None:
        raise EventError(f"Sender field ({_show(sender)}) is not valid ISO6523 format.")
    _remember(_known_senders)
    org = _known_senders[sender] = m.group(2)
    return org


def _receiver_org_number(receiver: str) -> str:
    """receiver_org_number for a receiver that is not a personal number."""
    if (m := _ISO6523.fullmatch(receiver)) is not None:
        org = m.group(2)
    elif _is_digits(receiver, 9) or _HASHED.fullmatch(receiver) is not None:
        org = receiver
    else:
        raise EventError(f"Receiver field ({_show(receiver)}) is not valid ISO6523 format.")
    _remember(_known_receivers)
    _known_receivers[receiver] = org
    return org


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
        if not value:
            raise EventError(f"{field} is required")

    status = out["status"]
    if status not in _STATUS_SET:
        raise EventError(f"status {_show(status)!r} is not one of {_STATUS_LIST}")

    uuid = _UUID.fullmatch
    if uuid(out["message_id"]) is None or uuid(out["conversation_id"]) is None:
        raise EventError("message_id and conversation_id must be of type UUID")

    orgnr = out["orgnr"]
    if orgnr not in _known_orgnrs:
        if not _is_digits(orgnr, 9):
            raise EventError(f"orgnr ({_show(orgnr)}) must be 9 digits")
        _remember(_known_orgnrs)
        _known_orgnrs.add(orgnr)

    sender = out["sender"]
    org = _known_senders.get(sender)
    out["sender_org_number"] = org if org is not None else _sender_org_number(sender)

    receiver = get("receiver")
    if receiver is not None:
        if type(receiver) is not str:
            raise EventError("receiver must be a string")
        org = _known_receivers.get(receiver)
        if org is not None:
            out["receiver_org_number"] = org
        elif _is_digits(receiver, 11):
            receiver = hash_personal_number(receiver)
            out["receiver"] = receiver
            out["receiver_org_number"] = receiver
        else:
            out["receiver_org_number"] = _receiver_org_number(receiver)
    else:
        given = get("receiver_org_number")
        if given is not None:
            # A non-string could hide a personal number (e.g. as a JSON number) from the
            # hashing below, so only strings are passed through.
            if type(given) is not str:
                raise EventError("receiver_org_number must be a string")
            if _is_digits(given, 11):
                out["receiver_org_number"] = hash_personal_number(given)

    if "@timestamp" in out:
        _check_datetime(out, "@timestamp")
    if "timestamp" in out:
        _check_datetime(out, "timestamp")

    logger_name = get("logger_name")
    if logger_name is None:
        out["logger_name"] = "STATUS"
    elif type(logger_name) is not str:
        raise EventError("logger_name must be a string")

    # Last, so that the rules above report first; this is what keeps encode() total.
    # Nearly every item is an ASCII string key with an ASCII string value: one test each.
    for key, value in out.items():
        if not (type(key) is str and type(value) is str and key.isascii() and value.isascii()):
            _check_item(key, value)
    return out


def decode(raw: bytes | str) -> object:
    """orjson-decode; raise EventError("body is not valid JSON: <short reason>") on failure."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        # orjson also reports a wrong input type and its 1024-level depth limit this way.
        raise EventError(f"body is not valid JSON: {_show(err.msg)}") from None


def parse(raw: bytes | str) -> dict:
    """decode + normalise."""
    return normalise(decode(raw))


def encode(event: dict) -> bytes:
    """Canonical bytes of a normalised event: sorted keys, no whitespace (the dedup identity)."""
    try:
        return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as err:
        raise EventError(f"event cannot be encoded as JSON: {_show(str(err))}") from None
