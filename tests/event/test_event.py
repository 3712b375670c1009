"""Tests for relay.event: the validation rules, the canonical encoding and the scrubbing."""

from __future__ import annotations

import hashlib
import re

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay import event as event_module
from relay.dev.example import SEED_EVENT
from relay.event import (
    STATUSES,
    EventError,
    NotStatusError,
    decode,
    encode,
    hash_personal_number,
    normalise,
    parse,
    scrub_personal_numbers,
)
from tests.event import event_reference as reference

# The example from the public eFormidling documentation (shared/seeds/000_cc37f8b3c237575b.txt).
SEED = SEED_EVENT
# StatusMessage's fields without a default (missing or null: refused)
REQUIRED = ("status", "conversation_id", "orgnr", "process_identifier", "service_identifier")
# its String fields with a default (may be left out, never null)
DEFAULTED = (
    "message_id",
    "document_identifier",
    "sender",
    "receiver",
    "receiver_org_number",
    "sender_org_number",
    "logger_name",
    "loglevel",
    "timestamp",
)
PERSON = "01017012345"  # an 11-digit personal identity number (made up)
PERSON_HASH = hashlib.sha256(PERSON.encode()).hexdigest()
ALLOWED = ", ".join(STATUSES)
DROP = object()  # marks a field to remove from SEED


def event(**changes: object) -> dict:
    """SEED with fields changed; a value of DROP removes the field. Keys may use __ for @."""
    out = dict(SEED)
    for key, value in changes.items():
        key = key.replace("__", "@")
        if value is DROP:
            out.pop(key, None)
        else:
            out[key] = value
    return out


VALID = [
    pytest.param(
        SEED,
        {
            "sender_org_number": "971203420",
            "receiver_org_number": "991825827",
            "logger_name": "STATUS",
        },
        id="seed",
    ),
    pytest.param(
        event(sender="0192:971203420:123456789"),
        {"sender_org_number": "123456789"},
        id="sender-with-part-identifier",
    ),
    pytest.param(
        event(receiver=PERSON, receiver_org_number=PERSON),
        {"receiver": PERSON_HASH, "receiver_org_number": PERSON_HASH},
        id="personal-number-receiver-hashed",
    ),
    pytest.param(
        event(receiver=DROP, receiver_org_number=PERSON),
        {"receiver_org_number": PERSON_HASH},
        id="personal-number-receiver-org-number-hashed",
    ),
    pytest.param(
        event(receiver=DROP, receiver_org_number="whatever"),
        {"receiver_org_number": "whatever"},
        id="receiver-org-number-passes-without-receiver",
    ),
    pytest.param(
        event(receiver=PERSON_HASH, receiver_org_number=DROP),
        {"receiver": PERSON_HASH, "receiver_org_number": PERSON_HASH},
        id="already-hashed-receiver",
    ),
    pytest.param(
        event(receiver="991825827", receiver_org_number="123"),
        {"receiver": "991825827", "receiver_org_number": "991825827"},
        id="bare-orgnr-receiver",
    ),
    pytest.param(
        event(receiver="0192:991825827:123456789"),
        {"receiver_org_number": "991825827"},
        id="receiver-with-part-identifier",
    ),
    pytest.param(
        event(receiver="0192:99182582"),
        {"receiver": "0192:99182582", "receiver_org_number": "0192:99182582"},
        id="receiver-any-text",
    ),
    pytest.param(
        event(receiver=""), {"receiver": "", "receiver_org_number": ""}, id="receiver-empty"
    ),
    pytest.param(
        event(receiver=f"9908:{PERSON}"),
        {"receiver": f"9908:{PERSON_HASH}", "receiver_org_number": f"9908:{PERSON_HASH}"},
        id="personal-number-inside-receiver-hashed",
    ),
    pytest.param(event(orgnr="97120342"), {"orgnr": "97120342"}, id="orgnr-any-text"),
    pytest.param(event(orgnr=""), {"orgnr": ""}, id="orgnr-empty"),
    pytest.param(event(process_identifier=""), {"process_identifier": ""}, id="empty-process"),
    pytest.param(event(service_identifier=""), {"service_identifier": ""}, id="empty-service"),
    pytest.param(event(__timestamp="yesterday"), {"@timestamp": "yesterday"}, id="@timestamp-free"),
    pytest.param(event(__timestamp=None), {"@timestamp": None}, id="@timestamp-null"),
    pytest.param(
        event(sender_org_number="000000000"),
        {"sender_org_number": "971203420"},
        id="wrong-sender-org-number-overwritten",
    ),
    pytest.param(
        event(receiver_org_number="000000000"),
        {"receiver_org_number": "991825827"},
        id="wrong-receiver-org-number-overwritten",
    ),
    pytest.param(event(logger_name="STATUS"), {"logger_name": "STATUS"}, id="logger-name-status"),
    pytest.param(event(logger_name=DROP), {"logger_name": "STATUS"}, id="logger-name-default"),
    pytest.param(
        event(direction="OUTGOING", extra={"a": [1, 2.5, None, True]}, appname="ip"),
        {"direction": "OUTGOING", "extra": {"a": [1, 2.5, None, True]}, "appname": "ip"},
        id="unknown-fields-pass-through",
    ),
    pytest.param(
        event(message_id="65F237BC-7D64-45CB-8F4D-3D81345B4668"),
        {"message_id": "65F237BC-7D64-45CB-8F4D-3D81345B4668"},
        id="uppercase-uuid",
    ),
    pytest.param(event(status="INNKOMMENDE_LEVERT"), {"status": "INNKOMMENDE_LEVERT"}, id="status"),
    pytest.param(event(loglevel="WARN"), {"loglevel": "WARN"}, id="loglevel-kept"),
    pytest.param(event(process_identifier="ø"), {"process_identifier": "ø"}, id="non-ascii-text"),
] + [
    pytest.param(event(timestamp=value), {"timestamp": value}, id=f"timestamp={value}")
    for value in (
        "2022-08-10T00:11:27.246Z",
        "2022-08-10T00:11:27",
        "2022-08-10T00:11",
        "2022-08-10T00:11Z",
        "2022-08-10T00:11:27.1",
        "2022-08-10T00:11:27.",
        "2022-08-10t00:11:27.123456789",
        "2024-02-29T23:59:59",
        "0000-02-29T00:00",
        " 2022-08-10T00:11:27\n",
    )
]


@pytest.mark.parametrize(("raw", "expected"), VALID)
def test_valid(raw: dict, expected: dict) -> None:
    before = dict(raw)
    out = normalise(raw)
    assert raw == before, "the input must not be modified"
    assert out is not raw
    for key, value in expected.items():
        assert out[key] == value, key
    assert normalise(out) == out
    assert parse(encode(out)) == out


def test_seed_normalised_exactly() -> None:
    assert normalise(SEED) == {**SEED, "logger_name": "STATUS"}
    assert "loglevel" not in normalise(SEED)


def test_personal_number_appears_nowhere() -> None:
    out = normalise(event(receiver=PERSON, receiver_org_number=PERSON, sender_org_number=PERSON))
    assert PERSON.encode() not in encode(out)
    assert hash_personal_number(PERSON) == PERSON_HASH


INVALID = (
    [
        pytest.param([SEED], "event must be a JSON object", id="array"),
        pytest.param("x", "event must be a JSON object", id="string"),
        pytest.param(None, "event must be a JSON object", id="null"),
        pytest.param(
            event(sender="971203420"),
            "Sender field (971203420) is not valid ISO6523 format.",
            id="sender-without-icd",
        ),
        pytest.param(
            event(sender="0192:97120342"),
            "Sender field (0192:97120342) is not valid ISO6523 format.",
            id="sender-short",
        ),
        pytest.param(
            event(sender="0192:971203420\n"),
            "Sender field (0192:971203420 ) is not valid ISO6523 format.",
            id="sender-trailing-newline",
        ),
        pytest.param(
            event(sender="0192:٩٧١٢٠٣٤٢٠"),
            "Sender field (0192:٩٧١٢٠٣٤٢٠) is not valid ISO6523 format.",
            id="sender-non-ascii-digits",
        ),
        pytest.param(
            event(message_id="65f237bc-7d64-45cb-8f4d-3d81345b466"),
            "message_id and conversation_id must be of type UUID",
            id="message-id-short",
        ),
        pytest.param(
            event(conversation_id="not-a-uuid"),
            "message_id and conversation_id must be of type UUID",
            id="conversation-id-bad",
        ),
        pytest.param(
            event(message_id="65f237bc7d6445cb8f4d3d81345b4668"),
            "message_id and conversation_id must be of type UUID",
            id="message-id-no-dashes",
        ),
        pytest.param(
            event(status="DELIVERED"),
            f"status 'DELIVERED' is not one of {ALLOWED}",
            id="unknown-status",
        ),
        pytest.param(
            event(status="levert"),
            f"status 'levert' is not one of {ALLOWED}",
            id="lowercase-status",
        ),
        pytest.param(event(status=3), "status must be a string", id="status-number"),
        pytest.param(
            event(sender=DROP),
            "Sender field () is not valid ISO6523 format.",
            id="missing-sender",
        ),
        pytest.param(
            event(sender=""), "Sender field () is not valid ISO6523 format.", id="empty-sender"
        ),
        pytest.param(
            event(message_id=DROP),
            "message_id and conversation_id must be of type UUID",
            id="missing-message-id",
        ),
        pytest.param(
            event(conversation_id=""),
            "message_id and conversation_id must be of type UUID",
            id="empty-conversation-id",
        ),
        pytest.param(event(status=""), f"status '' is not one of {ALLOWED}", id="empty-status"),
        pytest.param(event(orgnr=971203420), "orgnr must be a string", id="orgnr-number"),
        pytest.param(event(loglevel=["x"]), "loglevel must be a string", id="loglevel-list"),
        pytest.param(
            event(sender_org_number=1), "sender_org_number must be a string", id="sender-org-number"
        ),
        pytest.param(
            event(receiver_org_number={}),
            "receiver_org_number must be a string",
            id="receiver-org-number-object",
        ),
        pytest.param(event(receiver=991825827), "receiver must be a string", id="receiver-number"),
        pytest.param(
            event(receiver=DROP, receiver_org_number=int(PERSON)),
            "receiver_org_number must be a string",
            id="receiver-org-number-number",
        ),
        pytest.param(event(logger_name=1), "logger_name must be a string", id="logger-name-number"),
        pytest.param(
            event(logger_name="status"),
            'logger_name must be "STATUS" (got "status"): the status service acknowledges other'
            " loggers and then files them as general logs, not statuses",
            id="logger-name-other",
        ),
        pytest.param(
            event(big=2**64), "big holds an integer outside the 64-bit range", id="huge-int"
        ),
        pytest.param(event(x=[float("nan")]), "x holds a number that is not finite", id="nan"),
        pytest.param(event(x=(1,)), "x holds a value that is not JSON (tuple)", id="tuple"),
        pytest.param(
            event(x="\ud800"), "x contains a lone surrogate (not valid text)", id="surrogate"
        ),
        pytest.param({**SEED, 1: "x"}, "event keys must be strings", id="int-key"),
    ]
    + [
        pytest.param(event(**{field: DROP}), f"{field} is required", id=f"missing-{field}")
        for field in REQUIRED
    ]
    + [
        pytest.param(event(**{field: None}), f"{field} is required", id=f"null-{field}")
        for field in REQUIRED
    ]
    + [
        pytest.param(
            event(**{field: None}),
            f"{field} is null: the status service refuses null in this field"
            " (leave the field out instead)",
            id=f"null-{field}",
        )
        for field in DEFAULTED
    ]
    + [
        pytest.param(
            event(timestamp=value),
            f"timestamp ({value}) is not a local date-time the status service can read, such as"
            " 2022-08-10T00:11:27.246 (a trailing Z is allowed, no other offset)",
            id=f"timestamp={value}",
        )
        for value in (
            "",
            " ",
            "yesterday",
            "2022-08-10",
            "2022-08-10 00:11:27",
            "2022-02-30T00:00:00",
            "2023-02-29T00:00:00",
            "2022-08-10T24:00:00",
            "2022-08-10T00:60",
            "2022-08-10T00:11:60",
            "2022-13-10T00:11",
            "2022-08-00T00:11",
            "2022-08-10T00:11:27.1234567890",
            "2022-08-10T00:11:27+02:00",
            "2024-02-29T23:59:59-05:30",
            "2022-08-10T00:11:27+00:00",
            "2022-08-10T00:11:27+0200",
            "2022-08-10T00:11:27z",
            "2022-08-10t00:11:27Z",
            "2022-08-10T00:11.5",
            "2022-08-10T00:11:27.5.5",
            "20220810T001127",
            "+2022-08-10T00:11",
        )
    ]
)


@pytest.mark.parametrize(("raw", "message"), INVALID)
def test_invalid(raw: object, message: str) -> None:
    with pytest.raises(EventError) as info:
        normalise(raw)
    assert str(info.value) == message
    # only another logger is the distinguishable refusal a log-reading source may skip
    assert isinstance(info.value, NotStatusError) == message.startswith('logger_name must be "')
    assert info.value.reason == (
        "not_status" if isinstance(info.value, NotStatusError) else "invalid"
    )


def test_timestamp_not_a_string() -> None:
    with pytest.raises(EventError, match=r"^timestamp must be a string$"):
        normalise(event(timestamp=1660090287))


def test_checks_run_in_order() -> None:
    with pytest.raises(EventError, match="^orgnr is required$"):
        normalise(event(status="NOPE", orgnr=DROP))
    with pytest.raises(EventError, match="^status 'NOPE'"):
        normalise(event(status="NOPE", message_id="x"))
    # the service's validator checks the sender before the UUIDs
    with pytest.raises(EventError, match="^Sender field"):
        normalise(event(message_id="x", sender="1"))
    with pytest.raises(NotStatusError):
        normalise(event(logger_name="X", loglevel=None))


def test_error_messages_one_line_short_and_scrubbed() -> None:
    value = PERSON + "\n" + "x" * 500
    with pytest.raises(EventError) as info:
        normalise(event(sender=value))
    text = str(info.value)
    assert "\n" not in text
    assert PERSON not in text
    assert PERSON_HASH in text
    assert len(text) <= 100 + len("Sender field () is not valid ISO6523 format.")


def test_error_messages_never_show_part_of_a_cut_personal_number() -> None:
    with pytest.raises(EventError) as info:
        normalise(event(sender="x" * 94 + PERSON))
    assert "0101" not in str(info.value)


@pytest.mark.parametrize(
    "raw",
    [b"", b"   ", b"{", b"\xff\xfe", b'{"a": 1}x', b"\x00", b"NaN", b"[" * 2000, "\ud800"],
)
def test_decode_rejects(raw: bytes | str) -> None:
    with pytest.raises(EventError, match=r"^body is not valid JSON: \S"):
        decode(raw)


def test_decode_accepts_bytes_and_str() -> None:
    assert decode(orjson.dumps(SEED)) == SEED
    assert decode(orjson.dumps(SEED).decode()) == SEED
    assert parse(orjson.dumps(SEED)) == normalise(SEED)


def test_parse_rejects_too_deep_for_encode() -> None:
    # orjson decodes up to 1024 levels but encodes at most 254, so normalise must refuse.
    raw = b'{"deep":' + b"[" * 1000 + b"]" * 1000 + b"}"
    with pytest.raises(EventError, match="nested"):
        parse(orjson.dumps(SEED)[:-1] + b"," + raw[1:])


def test_encode_is_canonical() -> None:
    shuffled = dict(reversed(list(normalise(SEED).items())))
    assert encode(normalise(SEED)) == encode(normalise(shuffled))
    raw = encode(normalise(SEED))
    assert b" " not in raw and b"\n" not in raw
    assert list(orjson.loads(raw)) == sorted(orjson.loads(raw))


def test_encode_rejects_only_with_event_error() -> None:
    with pytest.raises(EventError):
        encode({"a": 2**70})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (PERSON, PERSON_HASH),
        (f"to {PERSON}.", f"to {PERSON_HASH}."),
        (f"{PERSON},{PERSON}", f"{PERSON_HASH},{PERSON_HASH}"),
        (f'"receiver":"{PERSON}"', f'"receiver":"{PERSON_HASH}"'),
        (f"fnr={PERSON};", f"fnr={PERSON_HASH};"),
        # glued to letters it is part of a hex string such as a UUID, not a number on its own
        (f"a{PERSON}b", f"a{PERSON}b"),
        ("3233d263-30d0-4cd4-9e38-f12345678901", "3233d263-30d0-4cd4-9e38-f12345678901"),
        ("971203420", "971203420"),
        ("0192:971203420", "0192:971203420"),
        ("123456789012", "123456789012"),
        ("1234567890123", "1234567890123"),
        ("1234567890", "1234567890"),
        ("", ""),
    ],
)
def test_scrub_personal_numbers(text: str, expected: str) -> None:
    assert scrub_personal_numbers(text) == expected


# --- properties -------------------------------------------------------------------------

FAST = settings(max_examples=300, deadline=None, database=None)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63, max_value=2**80)
    | st.floats()
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
# Digit strings via integers: much faster to generate than st.from_regex, and zero-padded.
digits9 = st.integers(0, 10**9 - 1).map("{:09d}".format)
digits11 = st.integers(0, 10**11 - 1).map("{:011d}".format)
uuids = st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper())
senders = st.builds(
    lambda icd, org, part: f"{icd}:{org}{part}",
    st.integers(0, 9999).map("{:04d}".format),
    digits9,
    st.sampled_from(["", ":"]) | digits9.map(lambda p: ":" + p),
)
receivers = senders | digits9 | digits11 | st.binary(min_size=32, max_size=32).map(bytes.hex)
timestamps = st.builds(
    lambda dt, digits, zone: dt.isoformat(timespec="seconds") + digits + zone,
    st.datetimes(),
    st.sampled_from(["", ".1", ".246", ".123456", ".123456789"]),
    st.sampled_from(["", "Z", "+02:00", "-11:30"]),
)
# what the service's LocalDateTime binding takes: no offset, or a trailing Z
local_timestamps = st.builds(
    lambda dt, digits, zone: dt.isoformat(timespec="seconds") + digits + zone,
    st.datetimes(),
    st.sampled_from(["", ".1", ".246", ".123456", ".123456789"]),
    st.sampled_from(["", "Z"]),
)
optional = {
    "receiver": receivers | st.text(),
    "receiver_org_number": st.text() | digits11,
    "sender_org_number": st.text(),
    "@timestamp": timestamps | st.text(),
    "timestamp": local_timestamps,
    "logger_name": st.just("STATUS"),
    "document_identifier": st.text(),
    "direction": st.sampled_from(["OUTGOING", "INCOMING"]),
}
valid_events = st.fixed_dictionaries(
    {
        "status": st.sampled_from(STATUSES),
        "conversation_id": uuids,
        "message_id": uuids,
        "orgnr": digits9 | st.text(),
        "process_identifier": st.text(),
        "service_identifier": st.sampled_from(["DPO", "DPV", "DPI", "DPF", "DPE", "DPH", "X"]),
        "sender": senders,
    },
    optional=optional,
)


def normalise_or_error(value: object) -> dict | None:
    try:
        out = normalise(value)
    except EventError as err:
        assert "\n" not in str(err) and "\r" not in str(err)
        return None
    assert isinstance(out, dict)
    encode(out)  # a normalised event always encodes
    return out


def parse_or_error(raw: bytes | str) -> None:
    try:
        out = parse(raw)
    except EventError as err:
        assert "\n" not in str(err)
        return
    assert isinstance(out, dict)
    encode(out)


@FAST
@given(json_values)
def test_normalise_and_parse_any_json_value(value: object) -> None:
    normalise_or_error(value)
    try:
        raw = orjson.dumps(value)
    except orjson.JSONEncodeError:
        return  # e.g. a huge int: no JSON document to parse
    parse_or_error(raw)


@settings(FAST, max_examples=150)
@given(st.dictionaries(st.text(max_size=20), json_values, max_size=4))
def test_normalise_valid_event_with_any_extra_fields(extra: dict) -> None:
    normalise_or_error({**extra, **SEED} if len(extra) % 2 else {**SEED, **extra})


@FAST
@given(st.binary() | st.text() | st.text(st.characters() | st.characters(categories=["Cs"])))
def test_parse_any_input(raw: bytes | str) -> None:
    parse_or_error(raw)


@FAST
@given(valid_events)
def test_valid_events(raw: dict) -> None:
    out = normalise(raw)
    assert normalise(out) == out
    assert encode(normalise(dict(reversed(list(raw.items()))))) == encode(out)
    assert parse(encode(out)) == out
    # the part identifier when there is one, as the service's HTTP path computes it
    assert out["sender_org_number"] == (
        raw["sender"][-9:] if len(raw["sender"]) > 15 else raw["sender"][5:14]
    )
    data = encode(out)
    receiver = raw.get("receiver")
    # receiver_org_number is only taken as given when there is no receiver to derive it from.
    for value in (receiver, raw.get("receiver_org_number") if receiver is None else None):
        if isinstance(value, str) and re.fullmatch(r"[0-9]{11}", value):
            assert hash_personal_number(value).encode() in data
            assert value.encode() not in data


# normalise remembers values that repeat between calls; it must answer exactly as the plain
# statement of the rules (tests/event_reference.py) does, whatever it saw before.
MUTANTS = (
    st.sampled_from([*SEED.values(), PERSON, "STATUS"])  # what is likely remembered
    | st.none()
    | digits9
    | digits11
    | senders
    | receivers
    | uuids
    | timestamps
    | local_timestamps
    | st.sampled_from(STATUSES)
    | st.text(max_size=40)
    | json_values
)
MUTATED_FIELDS = st.sampled_from([*REQUIRED, *optional, "extra", "ørg"])


def outcome(fn, value: object) -> tuple:
    try:
        out = fn(value)
    except EventError as err:
        return ("refused", str(err))
    return ("accepted", out, encode(out))


REFERENCE_INPUTS = (valid_events, st.lists(st.tuples(MUTATED_FIELDS, MUTANTS), max_size=3))


@settings(FAST, max_examples=100)
@given(*REFERENCE_INPUTS)
def test_normalise_answers_as_the_reference(raw: dict, mutations: list) -> None:
    _answers_as_the_reference(raw, mutations)


# the same at length: 1000 examples take about 15 s of CPU, so `make test` runs them (with the
# slow tests) and `make test-fast` the 100 above
@pytest.mark.e2e
@settings(FAST, max_examples=1000)
@given(*REFERENCE_INPUTS)
def test_normalise_answers_as_the_reference_at_length(raw: dict, mutations: list) -> None:
    _answers_as_the_reference(raw, mutations)


def _answers_as_the_reference(raw: dict, mutations: list) -> None:
    mutated = dict(raw)
    for field, value in mutations:
        # a value of the event itself under another field, or a new one
        mutated[field] = raw[value] if isinstance(value, str) and value in raw else value
    # the valid event twice (the second time from what the first left remembered), then the
    # mutated one, whose fields may match or contradict what was remembered
    for value in (raw, raw, mutated, mutated):
        assert outcome(normalise, value) == outcome(reference.normalise, value)


@settings(FAST, max_examples=300)
@given(st.lists(st.tuples(MUTATED_FIELDS, MUTANTS), min_size=1, max_size=6))
def test_normalise_answers_as_the_reference_after_the_seed(mutations: list) -> None:
    for field, value in mutations:
        mutated = dict(SEED, **{field: value})
        assert outcome(normalise, SEED) == outcome(reference.normalise, SEED)
        assert outcome(normalise, mutated) == outcome(reference.normalise, mutated)


class Text(str):
    """A str subclass: not a JSON string, whatever its value."""


@pytest.mark.parametrize("field", ["sender", "orgnr", "receiver", "status", "logger_name"])
def test_remembered_value_as_a_str_subclass_is_refused(field: str) -> None:
    normalise(SEED)
    event = dict(SEED, **{field: Text(SEED.get(field, "STATUS"))})
    assert outcome(normalise, event) == outcome(reference.normalise, event)
    assert outcome(normalise, event)[0] == "refused"


def test_remembered_values_are_bounded_and_hold_no_personal_number() -> None:
    for n in range(3 * event_module._KNOWN_MAX):
        org = f"{n:09d}"
        normalise(dict(SEED, sender=f"0192:{org}", orgnr=org, receiver=f"9908:{org}"))
        normalise(dict(SEED, receiver=f"x{n}"))
        normalise(dict(SEED, receiver=f"{n}" * 1000))  # free text: a long one is not kept
    normalise(dict(SEED, receiver=PERSON))
    normalise(dict(SEED, receiver=f"to {PERSON}"))
    for known in (event_module._known_senders, event_module._known_receivers):
        assert 0 < len(known) <= event_module._KNOWN_MAX
        assert not any(PERSON in k or PERSON in v for k, v in known.items())
        assert sum(len(k) + len(v) for k, v in known.items()) <= 2 * 64 * event_module._KNOWN_MAX


@pytest.mark.parametrize("field", [*SEED, "timestamp", "logger_name"])
def test_remembered_values_under_any_other_field(field: str) -> None:
    # every value the seed leaves remembered, and a personal number, put under every field
    for value in [*SEED.values(), PERSON, "STATUS", SEED["sender"] + ":"]:
        normalise(SEED)
        mutated = dict(SEED, **{field: value})
        assert outcome(normalise, mutated) == outcome(reference.normalise, mutated)
