"""Syslog framing (RFC 6587) and header parsing (RFC 5424 / 3164) as pure functions."""

from __future__ import annotations

import contextlib
import os

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.event import EventError
from relay.sources.syslog_framing import HEAD_BYTES, Frame, FrameReader
from relay.sources.syslog_header import decode_event, parse, payload

LIMIT = 4096
# what a reader may hold between calls: one frame, a length prefix, the kept head
BOUND = LIMIT + 12 + HEAD_BYTES


def frames_of(reader: FrameReader, chunks: list[bytes]) -> list[Frame]:
    out: list[Frame] = []
    for chunk in chunks:
        out += reader.feed(chunk)
        assert reader.buffered <= BOUND
    return out + reader.finish()


def counted(msg: bytes) -> bytes:
    return b"%d %s" % (len(msg), msg)


MIXED = [
    b'<13>1 2024-05-01T10:00:00Z host app - - - {"n": 1}',
    b'<13>May  1 10:00:00 host app: {"n": 2}',
    b'{"n": 3, "text": "line\\nbreak escaped"}',
    b'<13>1 - - - - - - {"n": 4}\nwith a real LF inside',
    b"12a is not a length prefix",
]
# counted, LF, counted, counted (holding an LF), LF starting with digits, and a CRLF line
STREAM = (
    counted(MIXED[0])
    + MIXED[1]
    + b"\n"
    + counted(MIXED[2])
    + counted(MIXED[3])
    + MIXED[4]
    + b"\n"
    + b"crlf line\r\n"
)
EXPECTED = [*MIXED, b"crlf line"]


# -- framing --------------------------------------------------------------------------------------


def test_mixed_framings_in_one_stream() -> None:
    assert [f.data for f in frames_of(FrameReader(LIMIT), [STREAM])] == EXPECTED


def test_split_at_every_byte_boundary() -> None:
    for cut in range(len(STREAM) + 1):
        got = frames_of(FrameReader(LIMIT), [STREAM[:cut], STREAM[cut:]])
        assert [f.data for f in got] == EXPECTED, cut


@given(st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_split_anywhere_any_number_of_times(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(STREAM)]
    chunks = [STREAM[a:b] for a, b in zip(points, points[1:], strict=False)]
    assert [f.data for f in frames_of(FrameReader(LIMIT), chunks)] == EXPECTED


def test_one_byte_at_a_time() -> None:
    chunks = [STREAM[i : i + 1] for i in range(len(STREAM))]
    assert [f.data for f in frames_of(FrameReader(LIMIT), chunks)] == EXPECTED


def test_huge_length_prefix_is_kept_bounded_and_breaks_the_stream() -> None:
    # "9999999999 " once made the reader skip 10 GB; now the frame is a bounded dead letter
    # and nothing after it is framed (the connection is closed)
    reader = FrameReader(LIMIT)
    body = b"x" * 5000 + b"\n" + b'{"after": true}\n'
    frames = reader.feed(b"9999999999 " + body[:3000])
    assert reader.broken
    (big,) = frames
    assert big.reason == "too_large"
    assert big.data == (b"9999999999 " + body)[:HEAD_BYTES]
    assert "9999999999 bytes" in big.problem and str(LIMIT) in big.problem
    assert "connection is closed" in big.problem
    assert reader.buffered == 0
    assert reader.feed(body[3000:]) == []
    assert reader.finish() == []


def test_length_prefix_just_over_the_limit_breaks_the_stream() -> None:
    reader = FrameReader(LIMIT)
    (big,) = reader.feed(b"%d " % (LIMIT + 1) + b"y" * 100)
    assert reader.broken and big.reason == "too_large"
    assert big.data == b"%d " % (LIMIT + 1) + b"y" * 100


@pytest.mark.parametrize("digits", [5, 11, 50, 10_000])
def test_absurd_digit_counts_are_never_made_a_number(digits: int) -> None:
    # more digits than a length within the limit can have: over the limit, decided after
    # len(str(LIMIT)) + 1 digits (10 000 digits would make int() raise)
    reader = FrameReader(LIMIT)
    run = b"9" * digits
    frames = []
    for i in range(0, digits, 3):
        frames += reader.feed(run[i : i + 3])
        assert reader.buffered <= len(str(LIMIT)) + 3
    (big,) = frames + reader.feed(b" rest")
    assert reader.broken and big.reason == "too_large"
    assert big.evidence.startswith(b"99999")  # never an empty dead letter
    assert f"more than {len(str(LIMIT))} digits" in big.problem
    assert len(big.problem) < 300
    assert len(big.data) <= HEAD_BYTES


def test_long_line_is_skipped_up_to_its_lf() -> None:
    line = b"a" * (LIMIT * 10)
    chunks = [line[i : i + 1000] for i in range(0, len(line), 1000)] + [b"\nnext\n"]
    big, nxt = frames_of(FrameReader(LIMIT), chunks)
    assert (big.reason, big.size, big.data) == ("too_large", len(line), line[:HEAD_BYTES])
    assert nxt.data == b"next"


def test_long_line_found_whole_in_one_chunk() -> None:
    line = b"b" * (LIMIT + 1)
    big, nxt = frames_of(FrameReader(LIMIT), [line + b"\nnext\n"])
    assert (big.reason, big.size) == ("too_large", LIMIT + 1)
    assert nxt.data == b"next"


def test_frame_at_the_limit_is_kept() -> None:
    msg = b"c" * LIMIT
    assert [f.data for f in frames_of(FrameReader(LIMIT), [counted(msg), msg + b"\n"])] == [
        msg,
        msg,
    ]


def test_truncated_octet_counted_frame_at_eof() -> None:
    (frame,) = frames_of(FrameReader(LIMIT), [b'100 {"cut": '])
    assert (frame.reason, frame.data) == ("truncated", b'{"cut": ')
    assert "8 of the 100 bytes" in frame.problem


def test_oversized_prefix_alone_in_a_chunk_is_its_own_evidence() -> None:
    (frame,) = frames_of(FrameReader(LIMIT), [b"999999 ", b"z" * 5000])
    assert (frame.reason, frame.data) == ("too_large", b"999999 ")
    assert "999999 bytes" in frame.problem


def test_last_line_without_lf_is_a_frame() -> None:
    assert [f.data for f in frames_of(FrameReader(LIMIT), [b"one\ntwo"])] == [b"one", b"two"]
    # digits alone at EOF never became a length prefix
    assert [f.data for f in frames_of(FrameReader(LIMIT), [b"123"])] == [b"123"]


@pytest.mark.parametrize(
    "stream",
    [b"12a {}\n", b"0 {}\n", b"-5 {}\n", b" 5 {}\n"],
    ids=["letter", "zero", "negative", "leading-space"],
)
def test_garbled_prefix_is_a_line(stream: bytes) -> None:
    assert [f.data for f in frames_of(FrameReader(LIMIT), [stream])] == [stream[:-1]]


def test_blank_lines_and_empty_frames_carry_nothing() -> None:
    assert frames_of(FrameReader(LIMIT), [b"\n\r\n  \n1  \n"]) == []


def test_nul_and_invalid_utf8_stay_in_the_frame() -> None:
    data = b'{"a": "\x00\xff\xfe"}\x00'
    assert [f.data for f in frames_of(FrameReader(LIMIT), [data + b"\n", counted(data)])] == [
        data,
        data,
    ]


def test_lines_only_mode_ignores_length_prefixes() -> None:
    reader = FrameReader(LIMIT, octet_counting=False)
    assert [f.data for f in frames_of(reader, [b"5 abcde\n"])] == [b"5 abcde"]


def test_evidence_of_a_cut_frame_ends_before_digits() -> None:
    # a personal number cut in two by the head would escape scrubbing
    frame = Frame(b"x" * 1018 + b"123456", 50_000, "too big", "too_large")
    assert frame.evidence == b"x" * 1018
    assert Frame(b"abc123", 6).evidence == b"abc123"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=3000), max_size=20), st.booleans())
def test_arbitrary_bytes_never_raise_and_stay_bounded(chunks: list[bytes], octets: bool) -> None:
    reader = FrameReader(LIMIT, octet_counting=octets)
    frames = frames_of(reader, chunks)
    assert sum(len(f.data) for f in frames) <= sum(map(len, chunks))
    assert all(f.problem is None or len(f.data) <= HEAD_BYTES for f in frames)
    assert reader.buffered == 0


@pytest.mark.parametrize(
    "pattern",
    [b"9999999999 ", b"x" * 4093 + b"\r", b"1234 " + b"\x00" * 59],
    ids=["length-prefix", "no-newline", "counted-nuls"],
)
def test_fifty_megabytes_of_garbage_keep_the_buffer_bounded(pattern: bytes) -> None:
    reader = FrameReader(LIMIT)
    chunk = (pattern * (65536 // len(pattern) + 1))[:65536]
    frames = 0
    for _ in range(50 * 1024 * 1024 // len(chunk)):
        frames += len(reader.feed(chunk))
        assert reader.buffered <= BOUND
    frames += len(reader.finish())
    assert frames > 0


def test_random_garbage_keeps_the_buffer_bounded() -> None:
    reader = FrameReader(LIMIT)
    for _ in range(64):
        reader.feed(os.urandom(32768))
        assert reader.buffered <= BOUND
    reader.finish()


# -- headers --------------------------------------------------------------------------------------

EVENT = {"status": "LEVERT", "text": 'a "quoted" ] bracket'}
JSON = orjson.dumps(EVENT)
BOM = b"\xef\xbb\xbf"


def test_rfc5424_with_structured_data_and_bom() -> None:
    frame = (
        b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog 42 ID47 "
        b'[exampleSDID@32473 iut="3" eventSource="App\\]lication" text="say \\"hi\\" \\\\"]'
        b'[examplePriority@32473 class="high"] ' + BOM + JSON
    )
    msg = parse(frame)
    assert (msg.format, msg.pri, msg.hostname, msg.app_name, msg.procid, msg.msgid) == (
        "rfc5424",
        165,
        "mymachine.example.com",
        "evntslog",
        "42",
        "ID47",
    )
    assert msg.timestamp == "2003-10-11T22:14:15.003Z"
    assert msg.structured_data.startswith("[exampleSDID@32473")
    assert msg.structured_data.endswith('class="high"]')
    assert msg.msg == BOM + JSON
    assert decode_event(frame) == EVENT


def test_rfc5424_nil_fields_and_no_sd() -> None:
    msg = parse(b"<14>1 - - - - - - " + JSON)
    assert (msg.format, msg.timestamp, msg.hostname, msg.structured_data) == (
        "rfc5424",
        None,
        None,
        None,
    )
    assert msg.msg == JSON


def test_rfc5424_as_util_linux_logger_sends_it() -> None:
    frame = (
        b"<13>1 2026-11-23T18:45:14.941625+00:00 vm root - - "
        b'[timeQuality tzKnown="1" isSynced="0"] ' + JSON
    )
    assert parse(frame).app_name == "root"
    assert decode_event(frame) == EVENT


def test_rfc5424_with_unclosed_sd_still_finds_the_event() -> None:
    assert decode_event(b'<14>1 - h a - - [broken x="1 ' + JSON) == EVENT


@pytest.mark.parametrize(
    ("frame", "host", "tag", "pid"),
    [
        (b"<13>Nov 23 18:45:14 vm root: ", "vm", "root", None),
        (b"<13>Nov  3 18:45:14 vm relay[1234]: ", "vm", "relay", "1234"),
        (b"<13>Nov 23 18:45:14 eformidling-status: ", None, "eformidling-status", None),
        (b"Nov 23 18:45:14 host app[7]: ", "host", "app", "7"),
        (b"<13>2024-01-01T00:00:00.123+01:00 host tag: ", "host", "tag", None),
        (b"<13>Nov 23 18:45:14 ", None, None, None),
    ],
    ids=["logger", "pid", "no-host", "no-pri", "rfc3339", "no-tag"],
)
def test_rfc3164_variants(frame: bytes, host: str | None, tag: str | None, pid: str | None):
    msg = parse(frame + JSON)
    assert (msg.format, msg.hostname, msg.app_name, msg.procid) == ("rfc3164", host, tag, pid)
    assert msg.msg == JSON
    assert decode_event(frame + JSON) == EVENT


@pytest.mark.parametrize("cookie", [b"@cee:", b"@cee: ", b"@cee:  "])
@pytest.mark.parametrize("header", [b"", b"<13>Nov 23 18:45:14 h app: ", b"<13>1 - h a - - - "])
def test_cee_cookie(cookie: bytes, header: bytes) -> None:
    assert decode_event(header + cookie + JSON) == EVENT


def test_payload_strips_bom_cookie_and_padding() -> None:
    assert payload(b"  " + BOM + b"@cee: " + JSON + b"\r\n\x00") == JSON


def test_bare_json_has_no_header() -> None:
    msg = parse(JSON)
    assert (msg.format, msg.msg) == ("none", JSON)
    assert decode_event(b" " + JSON + b"\x00") == EVENT


def test_event_found_after_an_unparsed_prefix() -> None:
    assert decode_event(b"<13>Nov 23 18:45:14 host some words first " + JSON) == EVENT
    assert decode_event(b"garbage then " + JSON) == EVENT


def test_json_key_is_not_taken_for_a_tag() -> None:
    frame = b'<13>Nov 23 18:45:14 {"status": "LEVERT"}'
    assert parse(frame).app_name is None
    assert decode_event(frame) == {"status": "LEVERT"}


@pytest.mark.parametrize(
    ("frame", "wording"),
    [
        (b"<13>Nov 23 18:45:14 host app: hello world", "not a JSON event"),
        (b"<13>Nov 23 18:45:14 host app: ", "no MSG"),
        (b'<13>1 - - - - - - {"a": "\xff"}', "not a JSON event"),
        (b"<13>1 - - - - - - {broken", "not a JSON event"),
    ],
    ids=["text", "empty", "invalid-utf8", "broken-json"],
)
def test_no_event_is_an_event_error(frame: bytes, wording: str) -> None:
    with pytest.raises(EventError, match=wording):
        decode_event(frame)


def test_json_that_is_not_an_object_is_returned_for_intake_to_refuse() -> None:
    assert decode_event(b"<13>1 - - - - - - [1, 2]") == [1, 2]


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_parse_and_decode_only_raise_event_error(frame: bytes) -> None:
    parse(frame)
    try:
        decode_event(frame)
    except EventError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=300)
@given(
    st.sampled_from([b"<13>1 - - - - - - ", b"<1>Jan  1 00:00:00 h t[1]: ", b"", b"<9>1 x "]),
    st.binary(max_size=200),
)
def test_header_like_prefixes_with_garbage_never_raise(prefix: bytes, rest: bytes) -> None:
    parse(prefix + rest)
    with contextlib.suppress(EventError):
        decode_event(prefix + rest)
