"""Counting and slicing the items of a body without decoding them.

Counting comes before decoding so that a small body inflating into millions of tiny lines is
refused for what it is, at C speed, without first making millions of Python objects. Slicing
gives a dead letter the bytes the producer sent, where re-encoding the decoded value would
change them (key order, number spelling, escapes) or fail (nesting deeper than orjson writes).
"""

from __future__ import annotations

import re

# what bytes.strip() removes: a line of only these is blank, as _lines() treats it
_BLANKS = re.compile(rb"[ \t\r\x0b\x0c]+")
_NEWLINES = re.compile(rb"\n+")
# the structural bytes of JSON; everything else between them is part of a scalar
_TOKEN = re.compile(rb'[\[\]{},"]')
# the rest of a string after its opening quote, escapes included (unrolled: no backtracking)
_STRING_REST = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*"', re.S)


def lines_over(data: bytes, limit: int) -> int | None:
    """The number of non-blank lines in `data` when it is over `limit`, else None. Cheap when
    the newlines alone show that the body is within the limit."""
    if data.count(b"\n") < limit:
        return None  # at most count + 1 lines
    # many newlines: drop blanks and runs of newlines, then count what is left (all in C)
    compact = _NEWLINES.sub(b"\n", _BLANKS.sub(b"", data)).strip(b"\n")
    lines = compact.count(b"\n") + 1 if compact else 0
    return lines if lines > limit else None


def array_elements(data: bytes) -> list[bytes]:
    """The raw bytes of each element of the JSON array in `data`, which must be one valid JSON
    array (orjson has decoded it), so only the structure is tracked here, not its validity."""
    elements: list[bytes] = []
    pos = data.index(b"[") + 1
    start = pos
    depth = 0
    search = _TOKEN.search
    rest_of_string = _STRING_REST.match
    while True:
        m = search(data, pos)
        if m is None:  # not a complete array: cannot happen for a body orjson decoded
            raise ValueError("not a complete JSON array")
        i = m.start()
        c = data[i]
        if c == 0x22:  # '"'
            end = rest_of_string(data, i + 1)
            if end is None:
                raise ValueError("unterminated string")
            pos = end.end()
            continue
        pos = i + 1
        if c in b"[{":
            depth += 1
        elif c in b"]}":
            if depth == 0:
                last = data[start:i].strip()
                if last or elements:
                    elements.append(last)
                return elements
            depth -= 1
        elif depth == 0:  # a comma between two elements
            elements.append(data[start:i].strip())
            start = pos
