"""What any value of an event must be to be stored: JSON that encodes back unchanged, with no
personal number in clear; and how a user value is shown in an error message."""

from __future__ import annotations

import hashlib
import math
import re

__all__ = ["EventError", "NotStatusError", "check_item", "hash_personal_number", "scrub", "show"]


class EventError(ValueError):
    """Validation failure. str(err) is one line: the message the real service would answer."""

    #: why the event was refused, for sources that count or route refusals by cause
    reason = "invalid"


class NotStatusError(EventError):
    """The event names another logger than STATUS: a log line, not a status.

    The service acknowledges such an object and files it as a general log, so the relay refuses
    it at ingest; a source that reads whole application logs (the JSON-lines source) may skip it
    instead of dead-lettering it.
    """

    reason = "not_status"


# Eleven digits standing alone: not a part of a longer number, nor of a hex string such as a
# UUID (whose groups can hold eleven digits in a row by chance).
PERSONAL_NUMBER = re.compile(r"(?<![0-9A-Za-z])[0-9]{11}(?![0-9A-Za-z])")

# Everything str.splitlines() would split on, so an echoed value can never break a log line.
_ONE_LINE = str.maketrans(dict.fromkeys("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029", " "))
_SHOW_MAX = 100

# orjson.dumps gives up beyond 254 nested containers and on integers outside
# [-2**63, 2**64); checking here keeps encode() total for every normalised event.
MAX_DEPTH = 100
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1


def hash_personal_number(value: str) -> str:
    """SHA-256 hex digest of ``value``, the form in which a personal number may be stored."""
    # surrogatepass only matters for lone surrogates, which valid text never has.
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def _hash_match(m: re.Match[str]) -> str:
    return hash_personal_number(m.group())


def scrub(text: str) -> str:
    """Replace every run of exactly 11 ASCII digits by its SHA-256 hex digest."""
    return PERSONAL_NUMBER.sub(_hash_match, text)


def show(value: str) -> str:
    """A user value made safe to echo: no personal number, short, one line, encodable."""
    # Scrub before the final cut: cutting first could leave part of a personal number,
    # too short for the scrubber to recognise. The first cut only bounds the work.
    text = scrub(value[: _SHOW_MAX * 2])
    if len(text) > _SHOW_MAX:
        text = text[: _SHOW_MAX - 3] + "..."
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.translate(_ONE_LINE)


def _check_text(field: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise EventError(f"{show(field)} contains a lone surrogate (not valid text)") from None


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
            raise EventError(f"{show(field)} holds an integer outside the 64-bit range")
    elif t is float:
        if not math.isfinite(value):
            raise EventError(f"{show(field)} holds a number that is not finite")
    elif t is list or t is dict:
        if depth > MAX_DEPTH:
            raise EventError(f"{show(field)} is nested more than {MAX_DEPTH} levels deep")
        if t is dict:
            for k, v in value.items():
                if type(k) is not str:
                    raise EventError(f"{show(field)} holds an object key that is not a string")
                if not k.isascii():
                    _check_text(field, k)
                _check_json(field, v, depth + 1)
        else:
            for v in value:
                _check_json(field, v, depth + 1)
    else:
        raise EventError(f"{show(field)} holds a value that is not JSON ({t.__name__})")


def check_item(key: object, value: object) -> None:
    """Raise unless ``key`` and ``value`` are plain JSON text and value that encode unchanged."""
    if type(key) is not str:
        raise EventError("event keys must be strings")
    if not key.isascii():
        _check_text(f"field name {key!r}", key)
    _check_json(key, value, 1)
