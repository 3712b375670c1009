"""Counting and slicing the items of a body without decoding them.

Counting comes before decoding so that a small body inflating into millions of tiny lines is
refused for what it is, at C speed, without first making millions of Python objects. Slicing
gives a dead letter the bytes the producer sent, where re-encoding the decoded value would
change them (key order, number spelling, escapes) or fail (nesting deeper than orjson writes).
"""

from __future__ import annotations

import re

# what bytes.strip() removes: a line of only these is blank, as _lines() treats it
_BLANKS = b" \t\r\x0b\x0c"
# the structural bytes of JSON; everything else between them is part of a scalar
_TOKEN = re.compile(rb'[\[\]{},"]')
# the rest of a string after its opening quote, escapes included (unrolled: no backtracking)
_STRING_REST = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*"', re.S)


def lines_over(data: bytes, limit: int) -> bool:
    """Whether `data` has more than `limit` non-blank lines. Cheap when the newlines alone show
    that it has not; otherwise a few copies of `data` in C, never a Python object per line."""
    if data.count(b"\n") < limit:
        return False  # at most count + 1 lines
    # without the blanks bytes.strip() removes, the only whitespace left is the newlines, so
    # split() yields exactly the non-blank lines; maxsplit stops it after limit + 1 of them
    return len(data.translate(None, _BLANKS).split(None, limit)) > limit


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
