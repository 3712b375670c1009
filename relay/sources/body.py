"""Turning an HTTP request body into the list of JSON values it holds.

Pure functions with no I/O, so the fuzz tests can drive them directly.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import orjson

from relay.sources import json_items

JSON_TYPES = frozenset({"application/json", "text/json"})
NDJSON_TYPES = frozenset(
    {
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonlines",
        "application/x-jsonlines",
        "application/json-lines",
    }
)
# ingest.max_items_per_request's default, for callers (the fuzz tests) that do not pass one
DEFAULT_MAX_ITEMS = 10_000
# What curl -d and simple clients send without being told; the body is still tried as JSON.
LENIENT_TYPES = frozenset({"", "application/x-www-form-urlencoded", "text/plain"})


class BodyError(ValueError):
    """The body as a whole cannot be read. `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# Not frozen: a frozen dataclass's __init__ costs three object.__setattr__ calls, about a
# fifth of splitting an NDJSON line; nothing changes an Item after split() returns it.
@dataclass(slots=True)
class Item:
    """One element of the body: its raw text (for the dead-letter table) and its decoded value,
    or the reason it could not be decoded."""

    raw: bytes | None
    value: object = None
    error: str | None = None


_CHUNK = 64 * 1024  # compressed bytes fed to zlib at a time


def decompress(data: bytes, encoding: str, limit: int) -> bytes:
    """Undo Content-Encoding, refusing to inflate past `limit` bytes (a zip bomb is a 413).

    A gzip body may hold several members (what `cat a.gz b.gz` and streaming compressors
    make); all are read. Bytes after the last stream are a 400: dropping them would answer
    200 for events that were never read."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return data
    if encoding in ("gzip", "x-gzip"):
        return _gunzip(data, encoding, limit)
    if encoding != "deflate":
        raise BodyError(415, f"Content-Encoding {encoding!r} is not supported; use gzip or deflate")
    # RFC 9110 says zlib-wrapped; some clients send raw deflate, so try both
    for wbits in (zlib.MAX_WBITS, -zlib.MAX_WBITS):
        inflater = zlib.decompressobj(wbits)
        try:
            out = _inflate(inflater, data, encoding, limit, limit)
        except zlib.error:
            continue
        if inflater.unused_data:
            raise _trailing(encoding, len(inflater.unused_data))
        return out
    raise BodyError(400, f"body is not valid {encoding} data")


def _gunzip(data: bytes, encoding: str, limit: int) -> bytes:
    # Fed in chunks: zlib copies all the input after a member's end into unused_data, which
    # for a body of many tiny members would copy the rest of the body once per member.
    view = memoryview(data)
    parts: list[bytes] = []
    size = pos = 0
    while True:
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
        while not inflater.eof:
            if pos >= len(data):
                raise BodyError(400, f"body is truncated {encoding} data")
            chunk = view[pos : pos + _CHUNK]
            try:
                out = inflater.decompress(chunk, limit - size + 1)
            except zlib.error:
                if not parts:
                    raise BodyError(400, f"body is not valid {encoding} data") from None
                raise _trailing(encoding, len(data) - pos) from None
            size += len(out)
            if size > limit or inflater.unconsumed_tail:
                raise BodyError(413, f"decompressed body is larger than {limit} bytes")
            parts.append(out)
            pos += len(chunk) - len(inflater.unused_data)
        if pos == len(data):
            return parts[0] if len(parts) == 1 else b"".join(parts)
        if data[pos : pos + 2] != b"\x1f\x8b":  # not another member
            raise _trailing(encoding, len(data) - pos)


def _inflate(inflater, data: bytes, encoding: str, room: int, limit: int) -> bytes:
    """One stream of at most `room` bytes; raises zlib.error when `data` does not start one."""
    out = inflater.decompress(data, room + 1)
    if len(out) > room or inflater.unconsumed_tail:
        raise BodyError(413, f"decompressed body is larger than {limit} bytes")
    if not inflater.eof:
        raise BodyError(400, f"body is truncated {encoding} data")
    return out


def _trailing(encoding: str, n: int) -> BodyError:
    return BodyError(
        400,
        f"body has {n} byte(s) after the end of its {encoding} data; "
        "send one complete stream (or whole gzip members) and nothing after it",
    )


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def split(
    data: bytes, content_type: str, max_items: int = DEFAULT_MAX_ITEMS
) -> tuple[bool, list[Item]]:
    """Split a body into items. Returns (single, items): `single` is True for one JSON object,
    which is answered the way the real service answers it. More than `max_items` items are a
    413 for the whole body. An array element's `raw` is None until `fill_raw` slices it."""
    mtype = media_type(content_type)
    if mtype in NDJSON_TYPES:
        return False, _lines(data, max_items)
    if mtype not in JSON_TYPES and mtype not in LENIENT_TYPES and not mtype.endswith("+json"):
        raise BodyError(
            415,
            f"Content-Type {mtype!r} is not supported; send application/json "
            "or application/x-ndjson",
        )
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if b"\n" in data.strip():
            # several JSON values, one per line, sent as application/json: read as NDJSON, but
            # only when every line is an object; otherwise it is one broken value (a truncated
            # or pretty-printed object), whose lines alone would be fragments no one can replay
            items = _lines(data, max_items)
            if all(item.error is None and type(item.value) is dict for item in items):
                return False, items
        raise BodyError(400, f"body is not valid JSON: {_short(exc)}") from None
    if type(value) is list:
        if not value:
            raise BodyError(400, "body is an empty JSON array; send at least one event")
        if len(value) > max_items:
            raise too_many_items(len(value), max_items)
        return False, [Item(None, v) for v in value]
    return True, [Item(data, value)]


def fill_raw(data: bytes, items: list[Item]) -> None:
    """Give array elements the bytes the producer sent, for their dead letters (only needed
    when one is invalid, so the valid path never pays for the scan)."""
    if items and items[0].raw is None:
        for item, raw in zip(items, json_items.array_elements(data), strict=True):
            item.raw = raw


def too_many_items(count: int | None, limit: int) -> BodyError:
    held = f"{count} items" if count is not None else f"more than {limit} items"
    return BodyError(
        413,
        f"body holds {held}, over ingest.max_items_per_request ({limit}); "
        "nothing was stored: send them in smaller requests",
    )


def _lines(data: bytes, max_items: int) -> list[Item]:
    # One orjson.loads per line: decoding the lines joined into one array is no faster (0.71
    # against 0.76 µs per 400-byte line), and would need proof that no line spans another.
    if json_items.lines_over(data, max_items):
        raise too_many_items(None, max_items)
    items: list[Item] = []
    append = items.append
    loads = orjson.loads
    for line in data.split(b"\n"):
        line = line.strip()
        if not line:
            continue
        try:
            append(Item(line, loads(line)))
        except orjson.JSONDecodeError as exc:
            append(Item(line, None, f"line is not valid JSON: {_short(exc)}"))
    if not items:
        raise BodyError(400, "body holds no events")
    return items


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
