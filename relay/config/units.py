"""Parsing and formatting of values written by humans: durations, sizes, listen addresses.

Durations are ``float`` seconds and sizes ``int`` bytes once loaded; in TOML and in the
environment they are written for humans ("250ms", "24h", "64KiB", "1GiB"). Each ``format_*``
function renders a value that its ``parse_*`` counterpart reads back exactly.
"""

from __future__ import annotations

import ipaddress
import math
import re
from decimal import Decimal
from fractions import Fraction

from relay.config.errors import _error, _show

__all__ = ["format_duration", "format_size", "parse_duration", "parse_listen", "parse_size"]

_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_EXAMPLES = '"250ms", "10s", "5m", "24h" or "30d"'

_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
# Largest first, so the rendered form is the shortest exact one.
_BINARY_UNITS = (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))

_HOSTNAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")


def _scale_duration(number: float, unit: str) -> float:
    # Dividing by 1000 (rather than multiplying by 0.001) keeps "250ms" exactly 0.25, and
    # format_duration uses this same function so rendering round-trips bit for bit.
    if unit == "ms":
        return number / 1000
    return number * _DURATION_SECONDS[unit]


def parse_duration(value: str | int | float, key: str) -> float:
    """Parse a duration into seconds.

    Accepts "250ms", "10s", "1.5s", "5m", "24h", "30d"; a bare number (int, float, or a string
    such as "10", as environment variables always are) means seconds. ``key`` names the setting
    in error messages.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _error(f"{key} must be a duration such as {_DURATION_EXAMPLES}, got {_show(value)}")
    if isinstance(value, str):
        if value.strip().startswith("-"):
            raise _error(f"{key} must not be negative, got {_show(value)}")
        match = _DURATION_RE.fullmatch(value)
        if match is None:
            raise _error(
                f"{key} must be a duration such as {_DURATION_EXAMPLES}, got {_show(value)}"
            )
        seconds = _scale_duration(float(match[1]), match[2] or "s")
    else:
        if value < 0:
            raise _error(f"{key} must not be negative, got {_show(value)}")
        seconds = float(value)
    if not math.isfinite(seconds):
        raise _error(f"{key} must be a finite duration, got {_show(value)}")
    return seconds


def format_duration(seconds: float) -> str:
    """Render seconds in the largest unit that represents them exactly ("10s", "250ms", "24h").

    Days are used only from two days up, so a day reads as the familiar "24h". The result
    always parses back to exactly ``seconds`` with :func:`parse_duration`.
    """
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a non-negative finite duration: {seconds!r}")
    if seconds == 0:
        return "0s"
    for unit in ("d", "h", "m", "s", "ms"):
        if unit == "d" and seconds < 2 * 86400:
            continue
        count = round(seconds * 1000) if unit == "ms" else round(seconds / _DURATION_SECONDS[unit])
        if count > 0 and _scale_duration(float(count), unit) == seconds:
            return f"{count}{unit}"
    # Not a whole number of milliseconds: fall back to plain decimal seconds. repr() is the
    # shortest string that round-trips; Decimal only removes a possible exponent ("1e-05").
    text = repr(float(seconds))
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")
    return f"{text}s"


def parse_size(value: str | int, key: str) -> int:
    """Parse a size into bytes.

    Accepts an integer or a string: "512", "512B", "64KiB", "10MiB", "1GiB", "1TiB" (powers of
    1024) or "64KB", "10MB", "1GB", "1TB" (powers of 1000). Units are case-insensitive; a
    fraction is allowed when the result is a whole number of bytes ("1.5KiB").
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _error(
            f'{key} must be a size such as "64KiB", "10MiB", "1GiB" or a number of bytes, '
            f"got {_show(value)}"
        )
    if isinstance(value, int):
        if value < 0:
            raise _error(f"{key} must not be negative, got {value}")
        return value
    match = _SIZE_RE.fullmatch(value)
    unit = (match[2].lower() or "b") if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise _error(
            f'{key} must be a size such as "64KiB", "10MiB", "1GiB" or a number of bytes, '
            f"got {_show(value)}"
        )
    size = Fraction(match[1]) * _SIZE_UNITS[unit]
    if size.denominator != 1:
        raise _error(f"{key} must be a whole number of bytes, got {_show(value)}")
    return int(size)


def format_size(size: int) -> str:
    """Render bytes as "10MiB"/"1GiB" when exact in a binary unit, else as plain digits."""
    for unit, factor in _BINARY_UNITS:
        if size > 0 and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def parse_listen(value: str, key: str) -> tuple[str, int]:
    """Parse "host:port" (or "[ipv6]:port") into ``(host, port)``; port 0 means any free port.

    The host is required: a sidecar should stay on loopback unless the operator explicitly
    writes "0.0.0.0:PORT", so ":8080" is rejected rather than silently exposed.
    """
    if not isinstance(value, str):
        raise _error(f'{key} must be a "host:port" string, got {_show(value)}')
    example = '"127.0.0.1:8080" (this machine only) or "0.0.0.0:8080" (all interfaces)'
    bracketed = re.fullmatch(r"\[([^\]]*)\]:(\d+)", value)
    plain = re.fullmatch(r"([^:\[\]]*):(\d+)", value)
    if bracketed:
        host, port_text = bracketed[1], bracketed[2]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _error(
                f'{key} has an invalid IPv6 address in {_show(value)}; write e.g. "[::1]:8080"'
            ) from None
    elif plain:
        host, port_text = plain[1], plain[2]
        if not host:
            raise _error(
                f"{key} has no host in {_show(value)}; write the address to listen on, "
                f"e.g. {example}"
            )
        if not _HOSTNAME_RE.fullmatch(host):
            raise _error(f"{key} has an invalid host in {_show(value)}; write e.g. {example}")
    elif value.count(":") > 1 and not value.startswith("["):
        raise _error(
            f'{key} must put an IPv6 address in brackets, e.g. "[::1]:8080", got {_show(value)}'
        )
    else:
        raise _error(f'{key} must be "host:port", e.g. {example}, got {_show(value)}')
    port = int(port_text)
    if port > 65535:
        raise _error(f"{key} has port {port} in {_show(value)}; use a port from 0 to 65535")
    return host, port
