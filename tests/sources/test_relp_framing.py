"""The RELP frame parser on its own: well-formed streams cut anywhere, hostile input bounded."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.sources.relp_framing import MAX_HEADER, RelpFrame, RelpParser, encode_frame
from relay.sources.syslog_framing import HEAD_BYTES


def frames_of(parser: RelpParser, stream: bytes, cuts: list[int]) -> list[RelpFrame]:
    got: list[RelpFrame] = []
    last = 0
    for cut in sorted(cuts) + [len(stream)]:
        got += parser.feed(stream[last:cut])
        last = cut
    return got


def test_librelp_session_as_sent() -> None:
    offers = b"relp_version=0\nrelp_software=librelp,1.11.0,http://librelp.adiscon.com\n"
    offers += b"commands=syslog"
    stream = b"1 open %d %s\n" % (len(offers), offers) + b"2 syslog 12 <13>hello \nx\n3 close 0\n"
    got = RelpParser(1000).feed(stream)
    assert [(f.txnr, f.command) for f in got] == [(1, "open"), (2, "syslog"), (3, "close")]
    assert got[1].data == b"<13>hello \nx"  # LF inside the data is data
    assert got[2].data == b""
    assert all(f.problem is None for f in got)


@given(
    st.lists(
        st.tuples(
            st.integers(0, 999_999_999),
            st.sampled_from(["syslog", "open", "close", "rsp", "serverclose"]),
            st.binary(max_size=300),
        ),
        max_size=20,
    ),
    st.lists(st.integers(0, 8000), max_size=10),
)
def test_any_cut_gives_the_same_frames(frames: list, cuts: list[int]) -> None:
    stream = b"".join(encode_frame(*f) for f in frames)
    got = frames_of(RelpParser(300), stream, [c % (len(stream) + 1) for c in cuts])
    assert [(f.txnr, f.command, f.data) for f in got] == frames
    assert all(f.problem is None for f in got)


@pytest.mark.parametrize(
    "stream, why",
    [
        (b"x open 0\n", "transaction number"),
        (b"1234567890 open 0\n", "transaction number"),
        (b"1 op3n 0\n", "command"),
        (b"1 " + b"a" * 33 + b" 0\n", "command"),
        (b"1  0\n", "command"),
        (b"1 syslog 1x\n", "data length"),
        (b"1 syslog 1234567890 ", "data length"),
        (b"1 syslog 3 abcX", "does not end with LF"),
        (b"1 syslog 3\n", "no data follows"),
        (b"\n", "transaction number"),
    ],
)
def test_malformed_header_breaks_the_stream(stream: bytes, why: str) -> None:
    parser = RelpParser(1000)
    good = encode_frame(7, "syslog", b"fine")
    got = parser.feed(good + stream + good)
    assert [f.data for f in got[:1]] == [b"fine"]
    assert len(got) == 2, got
    assert got[1].problem is not None and why in got[1].problem
    assert got[1].reason == "invalid"
    assert parser.broken
    assert parser.feed(good) == []  # nothing more is read
    assert parser.buffered == 0


def test_data_length_over_the_limit_is_refused_before_its_data_arrives() -> None:
    parser = RelpParser(1000)
    [frame] = parser.feed(b"5 syslog 1001 " + b"a" * 10)
    assert (frame.txnr, frame.command, frame.reason) == (5, "syslog", "too_large")
    assert "1001 data bytes is over the limit of 1000" in frame.problem
    assert parser.broken and parser.buffered == 0


def test_memory_stays_bounded_whatever_is_fed() -> None:
    rng = random.Random(13)
    for _ in range(200):
        parser = RelpParser(500)
        for _ in range(50):
            chunk = bytes(rng.choice(b"0123456789 \nsyslogab") for _ in range(rng.randint(1, 90)))
            for frame in parser.feed(chunk):
                assert len(frame.data) <= max(500, HEAD_BYTES)
            assert parser.buffered <= 500 + MAX_HEADER + 1


def test_a_header_that_never_ends_is_refused_at_its_bound() -> None:
    parser = RelpParser(1000)
    got = parser.feed(b"1" * 9)
    assert got == []
    [frame] = parser.feed(b"1")  # ten digits: no transaction number
    assert frame.problem is not None
    assert parser.feed(b"1 " + b"a" * 10_000) == []
