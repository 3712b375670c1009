"""Cutting a TCP byte stream into frames: RFC 6587 octet counting and newline-delimited lines.

The framing is detected per frame, as rsyslog's imtcp does: a frame that starts with a length
(``[1-9][0-9]* SP``) is octet-counted, anything else runs to the next LF. Senders differ, and some
switch framing after a reconnect, so a stream is never assumed to keep one framing.

`FrameReader` is pure (no I/O) and its memory is bounded: whatever it is fed, it keeps at most
one frame's worth of bytes (`max_frame` plus a length prefix) between calls. Frames over the
limit are discarded while they stream past, keeping only their first `HEAD_BYTES` for the
dead-letter record, so an oversized frame costs a dead letter, not the connection.

An octet-counted frame declared over the limit is different: its length prefix is all that says
where the next frame starts, and a hostile or broken one (``9999999999 ``) would have us skip
10 GB. Such a frame is kept as a bounded dead letter and the reader is `broken`: it reads no
more, and the connection is closed. A run of more digits than any length within the limit is
such a prefix too; it is never converted to a number.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HEAD_BYTES", "Frame", "FrameReader"]

# How much of an oversized or truncated frame is kept as evidence in the dead-letter table.
HEAD_BYTES = 1024
_DIGITS = frozenset(b"0123456789")
_NONZERO = frozenset(b"123456789")

_START, _SKIP_LINE = range(2)


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame: its bytes, or when `problem` is set, the first HEAD_BYTES of a frame that
    cannot be an event (`reason` is then the dead-letter reason: too_large or truncated)."""

    data: bytes
    size: int
    problem: str | None = None
    reason: str = "invalid"

    @property
    def evidence(self) -> bytes:
        """What a dead letter keeps of the frame. A head cut from a longer frame loses its
        trailing digits: a personal number cut in two would escape scrubbing."""
        if self.size > len(self.data):
            return self.data.rstrip(b"0123456789")
        return self.data


class FrameReader:
    """Incremental framer: `feed` bytes as they arrive, `finish` at end of stream."""

    def __init__(self, max_frame: int, *, octet_counting: bool = True) -> None:
        if max_frame < 1:
            raise ValueError("max_frame must be positive")
        self.max_frame = max_frame
        self.octet_counting = octet_counting
        self._buf = bytearray()
        self._state = _START
        # while discarding an oversized line: what is kept of it and its size so far
        self._head = bytearray()
        self._seen = 0
        # a length prefix has more digits than this only when it is over the limit
        self._max_digits = len(str(max_frame))
        self.broken = False  # an octet count over the limit: nothing more is read

    @property
    def buffered(self) -> int:
        """Bytes held between calls (bounded by max_frame + a length prefix + HEAD_BYTES)."""
        return len(self._buf) + len(self._head)

    def feed(self, data: bytes) -> list[Frame]:
        """The frames completed by `data`, in stream order. Once `broken`, none."""
        if self.broken:
            return []
        self._buf += data
        frames: list[Frame] = []
        pos = self._cut(frames)
        del self._buf[:pos]
        return frames

    def finish(self) -> list[Frame]:
        """End of stream: the frames still held. A last line without LF is a frame; an
        octet-counted frame cut short is returned as truncated. The reader is then reset."""
        frames: list[Frame] = []
        buf = self._buf
        if self.broken:
            pass
        elif self._state == _SKIP_LINE:
            frames.append(self._oversized(self._too_large_line(self._seen)))
        elif buf:
            length, body = self._length_prefix(0)
            if length is not None:
                data = bytes(buf[body:])
                frames.append(
                    Frame(
                        data[:HEAD_BYTES],
                        len(data),
                        f"connection closed after {len(data)} of the {length} bytes of an "
                        "octet-counted frame",
                        "truncated",
                    )
                )
            else:
                self._line(bytes(buf), frames)
        buf.clear()
        self._state = _START
        self._head.clear()
        return frames

    # -- the state machine -----------------------------------------------------------------------

    def _cut(self, frames: list[Frame]) -> int:
        """Emit every frame complete in the buffer; return how much of the buffer is consumed."""
        buf = self._buf
        pos = 0
        while True:
            if self._state == _SKIP_LINE:
                end = buf.find(b"\n", pos)
                stop = len(buf) if end < 0 else end
                self._keep_head(buf, pos, stop - pos)
                self._seen += stop - pos
                if end < 0:
                    return len(buf)
                pos = end + 1
                frames.append(self._oversized(self._too_large_line(self._seen)))
                continue
            if pos >= len(buf):
                return pos
            length, body = self._length_prefix(pos)
            if body < 0:
                return pos  # digits so far; wait for the byte that says what they are
            if length is not None:
                if length > self.max_frame:
                    frames.append(self._break(pos, body, length))
                    return len(buf)
                if len(buf) - body < length:
                    return pos
                self._emit(bytes(buf[body : body + length]), frames)
                pos = body + length
                continue
            end = buf.find(b"\n", pos)
            if end < 0:
                if len(buf) - pos > self.max_frame:
                    self._start_skip(_SKIP_LINE)
                    continue
                return pos
            self._line(bytes(buf[pos:end]), frames)
            pos = end + 1

    def _length_prefix(self, pos: int) -> tuple[int | None, int]:
        """(length, start of body) for an octet-counted frame at `pos`; (None, 0) when the frame
        is newline-delimited; (None, -1) when more bytes are needed to tell."""
        buf = self._buf
        if not self.octet_counting or buf[pos] not in _NONZERO:
            return None, 0
        end = pos + 1
        limit = min(len(buf), pos + self._max_digits + 1)
        while end < limit and buf[end] in _DIGITS:
            end += 1
        if end - pos > self._max_digits:
            # more digits than any length within the limit: over it, whatever follows
            return self.max_frame + 1, end
        if end == len(buf):
            return None, -1
        if buf[end] != 0x20:
            return None, 0
        return int(buf[pos:end]), end + 1

    def _break(self, pos: int, body: int, length: int) -> Frame:
        """The dead letter for an octet count over the limit at `pos`: the prefix and what is
        here of the body, at most HEAD_BYTES; the reader then reads no more."""
        buf = self._buf
        head = bytes(buf[pos : min(len(buf), pos + HEAD_BYTES)])
        if buf[body - 1] == 0x20:
            declared = f"of {length} bytes"
        else:
            # too many digits for a length within the limit: shown as text, never made a number
            end = pos
            while end < min(len(buf), pos + 21) and buf[end] in _DIGITS:
                end += 1
            shown = buf[pos : min(end, pos + 20)].decode() + ("..." if end - pos > 20 else "")
            declared = f"of {shown} bytes (more than {self._max_digits} digits)"
        self.broken = True
        self._state = _START
        self._head.clear()
        # a head cut from the frame loses its trailing digits (see Frame.evidence), unless that
        # would leave nothing: a dead letter always shows what was sent
        cut = bool(head.rstrip(b"0123456789"))
        return Frame(
            head,
            max(length, len(head) + 1) if cut else len(head),
            f"octet-counted frame {declared} is over the limit of {self.max_frame} bytes; "
            "the connection is closed (nothing after a length prefix that cannot be trusted "
            f"can be framed), only its first {len(head)} bytes are kept",
            "too_large",
        )

    def _line(self, line: bytes, frames: list[Frame]) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self.max_frame:
            frames.append(
                Frame(line[:HEAD_BYTES], len(line), self._too_large_line(len(line)), "too_large")
            )
        else:
            self._emit(line, frames)

    def _emit(self, data: bytes, frames: list[Frame]) -> None:
        # a blank line or an empty frame carries nothing; senders use them as keep-alives
        if data.strip():
            frames.append(Frame(data, len(data)))

    def _too_large_line(self, size: int) -> str:
        return (
            f"line of {size} bytes is over the limit of {self.max_frame} bytes; "
            f"only its first {HEAD_BYTES} bytes are kept"
        )

    def _start_skip(self, state: int) -> None:
        self._state = state
        self._seen = 0
        self._head.clear()

    def _keep_head(self, buf: bytearray, pos: int, n: int) -> None:
        room = HEAD_BYTES - len(self._head)
        if room > 0:
            self._head += buf[pos : pos + min(room, n)]

    def _oversized(self, problem: str) -> Frame:
        frame = Frame(bytes(self._head), self._seen, problem, "too_large")
        self._state = _START
        self._head.clear()
        return frame
