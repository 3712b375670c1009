"""Finding the JSON status event inside one syslog message.

The header is parsed as RFC 5424 (``<PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG``) or as the
looser RFC 3164 that rsyslog, logger and most appliances emit (``<PRI>Mmm dd hh:mm:ss HOST
TAG[pid]: MSG``, where PRI, HOST and TAG may each be missing). The MSG is the event, optionally
behind a CEE cookie (``@cee:``). Real senders bend both RFCs, so parsing never fails: a frame
whose header cannot be read is taken as MSG whole, and when the MSG is not JSON the event is
looked for from the first ``{``. Only `decode_event` raises, and only `EventError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

from relay.errors import one_line
from relay.event import EventError

__all__ = ["Message", "decode_event", "parse", "payload"]

_BOM = b"\xef\xbb\xbf"
_CEE = b"@cee:"
# What may trail a message: line ends, padding, and the NUL some old senders append.
_TRAILING = b" \t\r\n\x00"

_RFC5424 = re.compile(rb"<(\d{1,3})>([1-9]\d?) (\S+) (\S+) (\S+) (\S+) (\S+) ")
# SD-ELEMENTs: `]`, `"` and `\` are escaped with `\` inside PARAM-VALUEs; the alternatives
# start with different bytes, so matching stays linear on hostile input.
_SD = re.compile(rb'(?:\[(?:[^"\]]|"(?:[^"\\]|\\.)*")*\])+', re.DOTALL)
_PRI = re.compile(rb"<(\d{1,3})>")
# "Aug  1 12:00:00" (day space-padded) or an RFC 3339 stamp as rsyslog's forward format sends.
_TIMESTAMP = re.compile(
    rb"(?:[A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\S*)(?: |$)"
)
# HOST is optional, so "a b:" is HOST a, TAG b and "a:" is TAG a. A tag never starts with `{`
# or `@`, which keeps a JSON key or a CEE cookie from being read as one.
_HOST_TAG = re.compile(
    rb"(?:([A-Za-z0-9_][A-Za-z0-9_.-]*) )?([A-Za-z0-9_][A-Za-z0-9_./-]{0,47})(?:\[([^\]\s]*)\])?: ?"
)


@dataclass(frozen=True, slots=True)
class Message:
    """A syslog message split into its header fields and MSG (`format` says which header)."""

    format: str  # "rfc5424", "rfc3164" or "none"
    msg: bytes
    pri: int | None = None
    timestamp: str | None = None
    hostname: str | None = None
    app_name: str | None = None
    procid: str | None = None
    msgid: str | None = None
    structured_data: str | None = None


def parse(frame: bytes) -> Message:
    """Split `frame` into header and MSG; never raises."""
    m = _RFC5424.match(frame)
    if m is not None:
        return _rfc5424(frame, m)
    return _rfc3164(frame)


def payload(msg: bytes) -> bytes:
    """The MSG without the BOM, the CEE cookie and surrounding whitespace."""
    msg = msg.strip(_TRAILING)
    if msg.startswith(_BOM):
        msg = msg[len(_BOM) :].lstrip(_TRAILING)
    if msg.startswith(_CEE):
        msg = msg[len(_CEE) :].lstrip(_TRAILING)
    return msg


def decode_event(frame: bytes) -> object:
    """The decoded JSON value of the event in `frame`; raises EventError when it holds none."""
    msg = payload(parse(frame).msg)
    candidates = [msg]
    for text in (msg, frame):
        brace = text.find(b"{")
        if brace > 0:
            candidates.append(text[brace:].rstrip(_TRAILING))
    first_error: str | None = None
    others: list[object] = []
    for candidate in dict.fromkeys(candidates):
        try:
            value = orjson.loads(candidate)
        except orjson.JSONDecodeError as exc:
            first_error = first_error or exc.msg
            continue
        if isinstance(value, dict):
            return value
        others.append(value)
    if others:
        return others[0]  # JSON, but not an object: Intake says why that is no event
    if not msg:
        raise EventError("syslog message has no MSG (the event goes in the MSG part)")
    raise EventError(f"syslog MSG is not a JSON event: {one_line(first_error or 'empty', 200)}")


def _rfc5424(frame: bytes, m: re.Match[bytes]) -> Message:
    fields = [_nil(g) for g in m.groups()[2:]]
    pos = m.end()
    if frame.startswith(b"-", pos):
        sd: str | None = None
        pos += 1
    elif (sd_match := _SD.match(frame, pos)) is not None:
        sd = sd_match.group().decode("utf-8", "replace")
        pos = sd_match.end()
    else:
        sd = None  # malformed SD: keep everything after the header as MSG, to search for JSON
    if frame.startswith(b" ", pos):
        pos += 1
    return Message("rfc5424", frame[pos:], int(m[1]), *fields, sd)


def _rfc3164(frame: bytes) -> Message:
    pos = 0
    pri = None
    if (m := _PRI.match(frame)) is not None:
        pri = int(m[1])
        pos = m.end()
    timestamp = None
    if (m := _TIMESTAMP.match(frame, pos)) is not None:
        timestamp = m.group().strip().decode("ascii")
        pos = m.end()
    if pri is None and timestamp is None:
        return Message("none", frame)
    hostname = tag = procid = None
    if (m := _HOST_TAG.match(frame, pos)) is not None:
        hostname, tag, procid = (g.decode("ascii") if g is not None else None for g in m.groups())
        pos = m.end()
    return Message("rfc3164", frame[pos:], pri, timestamp, hostname, tag, procid)


def _nil(field: bytes) -> str | None:
    return None if field == b"-" else field.decode("utf-8", "replace")
