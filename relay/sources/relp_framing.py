"""Cutting a RELP byte stream into frames (librelp's ``doc/relp.md``); pure, no I/O.

    RELP-FRAME = TXNR SP COMMAND SP DATALEN [SP DATA] LF

TXNR and DATALEN are at most 9 digits, COMMAND at most 32 letters; DATA is exactly DATALEN
octets. Memory is bounded whatever a peer sends: a header is at most `MAX_HEADER` bytes, and a
DATALEN over `max_data` is refused before any of its data is held, so at most one frame's worth
(`max_data` plus a header) is buffered between calls.

A RELP stream cannot be resynchronised: the header is all that says where the next frame
starts. Anything that is not a frame (a malformed header, a DATALEN over the limit, a missing
trailer) therefore makes the parser `broken`: it returns one last frame with `problem` set,
holding at most `HEAD_BYTES` of what it saw (the dead letter), and reads nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.sources.syslog_framing import HEAD_BYTES

__all__ = ["MAX_HEADER", "RelpFrame", "RelpParser", "encode_frame"]

_MAX_NUMBER_DIGITS = 9
_MAX_COMMAND = 32
# "999999999 " + 32 letters + " 999999999" and the SP or LF after it
MAX_HEADER = _MAX_NUMBER_DIGITS + 1 + _MAX_COMMAND + 1 + _MAX_NUMBER_DIGITS + 1
_DIGITS = frozenset(b"0123456789")


@dataclass(frozen=True, slots=True)
class RelpFrame:
    """One RELP frame, or when `problem` is set, the first HEAD_BYTES of what could not be
    framed (`reason` is then the dead-letter reason: too_large or invalid; `txnr` is the frame's
    transaction number when the header got that far, else 0)."""

    txnr: int
    command: str
    data: bytes
    problem: str | None = None
    reason: str = "invalid"


def encode_frame(txnr: int, command: str, data: bytes = b"") -> bytes:
    """A frame as RELP puts it on the wire (DATALEN 0: no SP and no data)."""
    if not data:
        return b"%d %s 0\n" % (txnr, command.encode("ascii"))
    return b"%d %s %d %s\n" % (txnr, command.encode("ascii"), len(data), data)


class RelpParser:
    """Incremental parser: `feed` bytes as they arrive; once `broken`, it returns nothing."""

    def __init__(self, max_data: int) -> None:
        if max_data < 1:
            raise ValueError("max_data must be positive")
        self.max_data = max_data
        self._buf = bytearray()
        self.broken = False

    @property
    def buffered(self) -> int:
        """Bytes held between calls (at most max_data + MAX_HEADER + 1)."""
        return len(self._buf)

    @property
    def idle(self) -> bool:
        """Whether the stream ends on a frame boundary (nothing half-read)."""
        return not self._buf

    def feed(self, data: bytes) -> list[RelpFrame]:
        """The frames completed by `data`, in stream order; a broken one ends the list."""
        if self.broken:
            return []
        self._buf += data
        frames: list[RelpFrame] = []
        pos = 0
        buf = self._buf
        while pos < len(buf):
            got = self._one(buf, pos)
            if got is None:
                break
            frame, pos = got
            frames.append(frame)
            if frame.problem is not None:
                self.broken = True
                self._buf = bytearray()
                return frames
        del buf[:pos]
        return frames

    def _one(self, buf: bytearray, pos: int) -> tuple[RelpFrame, int] | None:
        """The frame starting at `pos` and where the next starts, or None when incomplete."""
        # a header is short: look no further than MAX_HEADER bytes for its three fields
        window = bytes(buf[pos : pos + MAX_HEADER])
        first = window.find(b" ")
        if first < 0:
            if len(window) > _MAX_NUMBER_DIGITS or not _digits_only(window):
                return self._bad(window, 0, "transaction number is not 1 to 9 digits"), pos
            return None
        txnr_text = window[:first]
        if not 1 <= len(txnr_text) <= _MAX_NUMBER_DIGITS or not _digits_only(txnr_text):
            return self._bad(window, 0, "transaction number is not 1 to 9 digits"), pos
        txnr = int(txnr_text)
        second = window.find(b" ", first + 1)
        command_text = window[first + 1 : second if second >= 0 else len(window)]
        if len(command_text) > _MAX_COMMAND or not (command_text.isalpha() or not command_text):
            return self._bad(window, txnr, "command is not 1 to 32 letters"), pos
        if second < 0:
            return None
        if not command_text:
            return self._bad(window, txnr, "command is not 1 to 32 letters"), pos
        # DATALEN ends at SP (data follows) or LF (no data: DATALEN 0)
        rest = window[second + 1 :]
        end = next((i for i, c in enumerate(rest) if c in b" \n"), -1)
        length_text = rest if end < 0 else rest[:end]
        if len(length_text) > _MAX_NUMBER_DIGITS or not _digits_only(length_text):
            return self._bad(window, txnr, "data length is not 1 to 9 digits"), pos
        if end < 0:
            return None
        if not length_text:
            return self._bad(window, txnr, "data length is not 1 to 9 digits"), pos
        length = int(length_text)
        command = command_text.decode("ascii")
        if length > self.max_data:
            return (
                RelpFrame(
                    txnr,
                    command,
                    _head(buf, pos),
                    f"RELP frame of {length} data bytes is over the limit of {self.max_data} "
                    f"bytes; only its first {HEAD_BYTES} bytes are kept",
                    "too_large",
                ),
                pos,
            )
        start = pos + second + 1 + end + 1  # after the SP or LF that ended DATALEN
        if rest[end] == 0x0A:
            if length:
                return self._bad(window, txnr, "data length is not 0 but no data follows"), pos
            return RelpFrame(txnr, command, b""), start
        if len(buf) < start + length + 1:
            return None
        if buf[start + length] != 0x0A:
            return (
                self._bad(
                    _head(buf, pos), txnr, "frame does not end with LF after its data length"
                ),
                pos,
            )
        return RelpFrame(txnr, command, bytes(buf[start : start + length])), start + length + 1

    @staticmethod
    def _bad(seen: bytes, txnr: int, why: str) -> RelpFrame:
        return RelpFrame(txnr, "", bytes(seen[:HEAD_BYTES]), f"not a RELP frame: {why}")


def _digits_only(text: bytes) -> bool:
    return all(c in _DIGITS for c in text)


def _head(buf: bytearray, pos: int) -> bytes:
    return bytes(buf[pos : pos + HEAD_BYTES])
