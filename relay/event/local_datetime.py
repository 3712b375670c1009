"""Which `timestamp` texts the status service can bind, so the relay refuses exactly the others.

The service binds `timestamp` to a java.time.LocalDateTime with Jackson's LocalDateTimeDeserializer
(jackson-datatype-jsr310 2.12, lenient by default) and DateTimeFormatter.ISO_LOCAL_DATE_TIME
(strict resolver): the text is trimmed as by Java's String.trim(); a text whose 11th character is
an upper-case 'T' and that ends in an upper-case 'Z' loses the 'Z' (a UTC "instant" read as local
time); the rest must be a local date-time: yyyy-MM-dd, 'T' in either case, HH:mm, optionally :ss,
optionally a '.' and 0 to 9 fraction digits. Any other offset (+02:00, -05:30, z, +0000) fails
binding and the service answers 400. Anything it cannot bind would only be refused upstream.
"""

from __future__ import annotations

import re

__all__ = ["binds_as_local_datetime"]

# The year is 4 ASCII digits: Java would also take a signed year of more digits, which no
# producer means; year 0000 is valid in the ISO chronology and is taken.
_LOCAL = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.[0-9]{0,9})?)?",
    re.ASCII,
)
# String.trim() strips every code point up to U+0020.
_JAVA_TRIM = "".join(map(chr, range(0x21)))
_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days_in(year: int, month: int) -> int:
    if month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0):
        return 29
    return _DAYS[month - 1]


def binds_as_local_datetime(value: str) -> bool:
    """True when the service's LocalDateTime binding accepts ``value``."""
    text = value.strip(_JAVA_TRIM)
    if len(text) > 10 and text[10] == "T" and text[-1] == "Z":
        text = text[:-1]
    m = _LOCAL.fullmatch(text)
    if m is None:
        return False
    year, month, day, hour, minute, second = m.groups()
    month_n = int(month)
    return (
        1 <= month_n <= 12
        and 1 <= int(day) <= _days_in(int(year), month_n)
        and int(hour) <= 23
        and int(minute) <= 59
        and (second is None or int(second) <= 59)
    )
