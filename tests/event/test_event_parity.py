"""Validation parity with the status service, both ways: one row per case, what the service does
with it and what the relay does at ingest.

The service is efm-kafka-status-proxy (Kotlin, Spring Boot 2.5.4, so Jackson 2.12 with
jackson-module-kotlin and jackson-datatype-jsr310). Its HTTP path, ``POST /api/status``, binds the
body to the data class ``StatusMessage`` and then runs ``MessageProcessor.process``. The RSocket
path (``RSocketController.kt``) checks nothing and only routes on ``logger_name``, so what the
HTTP path refuses is what the relay must refuse, and what it accepts the relay must accept,
unless a row says why the relay is stricter (``deviation``). Files cited, under
src/main/kotlin/no/digdir/meldingsutveksling/loggingproxy/:

- SM: domain/StatusMessage.kt: which fields are non-null, which have a default;
- ST: domain/Status.kt: the enum;
- MP: MessageProcessor.kt: the sender and UUID checks, sender_org_number / receiver_org_number;
- SC: StatusMessageController.kt: a MessageProcessingException is a 400 with its text as body;
- RC: RSocketController.kt: logger_name routing;
- JK: Jackson as Spring Boot configures it (pom.xml): unknown properties ignored, Kotlin
  constructor binding (a missing non-null parameter without default, or an explicit null for
  any non-null parameter, fails binding), LocalDateTimeDeserializer for `timestamp`.

"Range for ISO6523 not supported" (MP) has no row: it is unreachable, since a sender that
passed the pattern always has 3 or 4 non-blank groups (whole match, ICD, organisation number,
maybe the part identifier); test_range_text_is_unreachable shows it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import orjson
import pytest

from relay.dev.example import SEED_EVENT
from relay.event import STATUSES, EventError, NotStatusError, normalise
from tests.helpers import inprocess_relay

PERSON = "01017012345"  # made up
PERSON_HASH = hashlib.sha256(PERSON.encode()).hexdigest()
DROP = object()
ALLOWED = ", ".join(STATUSES)
NULL = " is null: the status service refuses null in this field (leave the field out instead)"
TIME = (
    " is not a local date-time the status service can read, such as 2022-08-10T00:11:27.246"
    " (a trailing Z is allowed, no other offset)"
)

ACCEPT = "accept"
TEXT = "400 text"  # a text/plain 400 whose body the relay repeats word for word
BINDING = "400 binding"  # Spring's JSON error body; the relay gives its own one-line reason


@dataclass
class Row:
    id: str
    changes: dict
    service: str  # ACCEPT, TEXT or BINDING
    source: str  # where in the service the rule is
    relay: str | dict  # the relay's refusal text, or fields of the accepted event
    deviation: str = ""  # why the relay refuses what the service accepts
    not_status: bool = field(default=False)

    def event(self) -> dict:
        out = dict(SEED_EVENT)
        for key, value in self.changes.items():
            if value is DROP:
                out.pop(key, None)
            else:
                out[key] = value
        return out


def ok(**fields: object) -> dict:
    return fields


ROWS = [
    # --- accepted by both ----------------------------------------------------------------
    Row("docs-example", {}, ACCEPT, "JK unknown @timestamp ignored", ok(logger_name="STATUS")),
    Row(
        "unknown-fields-any-json",
        {"direction": "OUTGOING", "extra": {"a": [1, None]}},
        ACCEPT,
        "JK FAIL_ON_UNKNOWN_PROPERTIES off",
        ok(direction="OUTGOING"),
    ),
    Row("@timestamp-any-text", {"@timestamp": "x"}, ACCEPT, "JK unknown field", ok()),
    Row("@timestamp-null", {"@timestamp": None}, ACCEPT, "JK unknown field", ok()),
    Row("orgnr-8-digits", {"orgnr": "97120342"}, ACCEPT, "MP never checks orgnr", ok()),
    Row("orgnr-letters", {"orgnr": "my org"}, ACCEPT, "MP never checks orgnr", ok()),
    Row("orgnr-empty", {"orgnr": ""}, ACCEPT, "SM non-null, empty binds", ok(orgnr="")),
    Row("process-empty", {"process_identifier": ""}, ACCEPT, "SM", ok()),
    Row("service-empty", {"service_identifier": ""}, ACCEPT, "SM", ok()),
    Row("service-unknown", {"service_identifier": "DPX"}, ACCEPT, "SM plain String", ok()),
    Row("document-missing", {"document_identifier": DROP}, ACCEPT, "SM default", ok()),
    Row("loglevel-any", {"loglevel": "TRACE"}, ACCEPT, "SM default INFO", ok(loglevel="TRACE")),
    Row("uppercase-uuid", {"message_id": SEED_EVENT["message_id"].upper()}, ACCEPT, "MP", ok()),
    Row(
        "receiver-not-iso6523",
        {"receiver": "0192:99182582"},
        ACCEPT,
        "MP receiver check commented out; receiver_org_number = receiver",
        ok(receiver_org_number="0192:99182582"),
    ),
    Row(
        "receiver-any-text",
        {"receiver": "Kari Nordmann"},
        ACCEPT,
        "MP",
        ok(receiver_org_number="Kari Nordmann"),
    ),
    Row("receiver-empty", {"receiver": ""}, ACCEPT, "MP", ok(receiver_org_number="")),
    Row("receiver-missing", {"receiver": DROP}, ACCEPT, "SM default", ok()),
    Row(
        "receiver-9-digits",
        {"receiver": "991825827", "receiver_org_number": "1"},
        ACCEPT,
        "MP",
        ok(receiver_org_number="991825827"),
    ),
    Row(
        "receiver-with-part-identifier",
        {"receiver": "0192:991825827:123456789"},
        ACCEPT,
        "MP group 2 for the receiver",
        ok(receiver_org_number="991825827"),
    ),
    Row(
        "receiver-org-number-overwritten",
        {"receiver_org_number": "000000000"},
        ACCEPT,
        "MP",
        ok(receiver_org_number="991825827"),
    ),
    Row(
        "sender-with-part-identifier",
        {"sender": "0192:971203420:123456789"},
        ACCEPT,
        "MP the last non-blank group: the part identifier",
        ok(sender_org_number="123456789"),
    ),
    Row(
        "sender-part-without-colon",
        {"sender": "0192:971203420123456789"},
        ACCEPT,
        "MP (?::)? is optional",
        ok(sender_org_number="123456789"),
    ),
    Row(
        "sender-trailing-colon",
        {"sender": "0192:971203420:"},
        ACCEPT,
        "MP",
        ok(sender_org_number="971203420"),
    ),
    Row(
        "sender-org-number-overwritten",
        {"sender_org_number": "000000000"},
        ACCEPT,
        "MP",
        ok(sender_org_number="971203420"),
    ),
    Row("logger-name-missing", {}, ACCEPT, "SM default STATUS", ok(logger_name="STATUS")),
    Row("logger-name-status", {"logger_name": "STATUS"}, ACCEPT, "RC", ok(logger_name="STATUS")),
    *(
        Row(f"timestamp={value!r}", {"timestamp": value}, ACCEPT, "JK ISO_LOCAL_DATE_TIME", ok())
        for value in (
            "2022-08-10T00:11:27.246",
            "2022-08-10T00:11:27.246Z",  # lenient: a trailing Z is cut off
            "2022-08-10T00:11",
            "2022-08-10T00:11:27",
            "2022-08-10T00:11:27.123456789",
            "2022-08-10T00:11:27.",  # a fraction of 0 to 9 digits
            "2022-08-10t00:11:27",  # parsed case-insensitively
            " 2022-08-10T00:11:27 ",  # String.trim()
            "2024-02-29T00:00",
        )
    ),
    # --- the relay changes what it accepts ----------------------------------------------------
    Row(
        "receiver-personal-number",
        {"receiver": PERSON},
        ACCEPT,
        "MP; the integrasjonspunkt hashes it before sending",
        ok(receiver=PERSON_HASH, receiver_org_number=PERSON_HASH),
    ),
    Row(
        "receiver-holding-a-personal-number",
        {"receiver": f"9908:{PERSON}"},
        ACCEPT,
        "MP; the relay never stores a personal number in clear",
        ok(receiver=f"9908:{PERSON_HASH}", receiver_org_number=f"9908:{PERSON_HASH}"),
    ),
    # --- refused by both, with the service's text ---------------------------------------------
    *(
        Row(
            f"sender={value!r}" if value is not DROP else "sender-missing",
            {"sender": value},
            TEXT,
            "MP iso6523Regex, SC",
            f"Sender field ({shown}) is not valid ISO6523 format.",
        )
        for value, shown in (
            ("971203420", "971203420"),
            ("0192:97120342", "0192:97120342"),
            ("0192:971203420:12345678", "0192:971203420:12345678"),
            ("0192:٩٧١٢٠٣٤٢٠", "0192:٩٧١٢٠٣٤٢٠"),
            ("", ""),
            (DROP, ""),  # default ""
        )
    ),
    *(
        Row(f"uuid-{name}", changes, TEXT, "MP idRegex, SC", UUID)
        for UUID in ("message_id and conversation_id must be of type UUID",)
        for name, changes in (
            ("message-id-short", {"message_id": "65f237bc-7d64-45cb-8f4d-3d81345b466"}),
            ("message-id-no-dashes", {"message_id": "65f237bc7d6445cb8f4d3d81345b4668"}),
            ("message-id-missing", {"message_id": DROP}),  # default ""
            ("message-id-empty", {"message_id": ""}),
            ("conversation-id-bad", {"conversation_id": "not-a-uuid"}),
            ("conversation-id-empty", {"conversation_id": ""}),
        )
    ),
    # --- refused by both: binding fails -------------------------------------------------------
    Row("array", {}, BINDING, "JK", "event must be a JSON object"),
    *(
        Row(
            f"status={v!r}",
            {"status": v},
            BINDING,
            "ST, JK",
            f"status {v!r} is not one of {ALLOWED}",
        )
        for v in ("DELIVERED", "levert", "", " LEVERT")
    ),
    *(
        Row(f"{how}-{name}", {name: value}, BINDING, "SM no default, JK", f"{name} is required")
        for name in (
            "status",
            "conversation_id",
            "orgnr",
            "process_identifier",
            "service_identifier",
        )
        for how, value in (("missing", DROP), ("null", None))
    ),
    *(
        Row(f"null-{name}", {name: None}, BINDING, "SM non-null with default, JK", name + NULL)
        for name in (
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
    ),
    Row("loglevel-object", {"loglevel": {}}, BINDING, "JK", "loglevel must be a string"),
    Row(
        "document-array",
        {"document_identifier": []},
        BINDING,
        "JK",
        "document_identifier must be a string",
    ),
    *(
        Row(
            f"timestamp={value!r}",
            {"timestamp": value},
            BINDING,
            "JK LocalDateTime",
            f"timestamp ({value}){TIME}",
        )
        for value in (
            "2022-08-10T00:11:27+02:00",
            "2022-08-10T00:11:27.246+01:00",
            "2024-02-29T23:59:59-05:30",
            "2022-08-10T00:11:27+00:00",
            "2022-08-10T00:11:27z",
            "2022-08-10t00:11:27Z",  # the Z is cut only after an upper-case T
            "2022-08-10",
            "2022-08-10 00:11:27",
            "2022-02-30T00:00",
            "2022-08-10T24:00",
            "2022-08-10T00:11:27.1234567890",
            "",
            "yesterday",
        )
    ),
    # --- the relay refuses what the service accepts, on purpose --------------------------------
    Row(
        "logger-name-other",
        {"logger_name": "OTHER"},
        ACCEPT,
        "SC ignores logger_name; RC files it as a general log",
        'logger_name must be "STATUS" (got "OTHER"): the status service acknowledges other'
        " loggers and then files them as general logs, not statuses",
        deviation="over RSocket it would be acknowledged and never become a status (issue 10)",
        not_status=True,
    ),
    Row(
        "orgnr-number",
        {"orgnr": 971203420},
        ACCEPT,
        "JK coerces a scalar to String",
        "orgnr must be a string",
        deviation="over RSocket nothing is coerced: the number would be stored as a number",
    ),
    Row(
        "status-index",
        {"status": 3},
        ACCEPT,
        "JK EnumDeserializer takes an index (LEVERT)",
        "status must be a string",
        deviation="an index is a producer bug, and over RSocket 3 would be stored",
    ),
    Row(
        "timestamp-array",
        {"timestamp": [2022, 8, 10, 0, 11]},
        ACCEPT,
        "JK LocalDateTime from an array of numbers",
        "timestamp must be a string",
        deviation="over RSocket the array would be stored, not a date-time",
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_parity(row: Row) -> None:
    raw: object = [row.event()] if row.id == "array" else row.event()
    try:
        out = normalise(raw)
    except EventError as err:
        refused: EventError | None = err
    else:
        refused = None

    if isinstance(row.relay, dict):
        assert refused is None, f"relay refused: {refused}"
        assert row.service == ACCEPT
        for key, value in row.relay.items():
            assert out[key] == value, key
        return
    assert refused is not None, "relay accepted"
    assert str(refused) == row.relay
    assert isinstance(refused, NotStatusError) == row.not_status
    # Both ways: the relay refuses only what the service refuses, unless the row says why.
    assert (row.service != ACCEPT) != bool(row.deviation)


def test_range_text_is_unreachable() -> None:
    # MP: groups = iso6523Regex.find(sender).groupValues.filter { it.isNotBlank() }; 3 or 4
    # groups, anything else "Range for ISO6523 not supported". Kotlin's groupValues gives ""
    # for a group that did not take part, Python None.
    pattern = re.compile(r"^([0-9]{4}:)([0-9]{9})(?::)?([0-9]{9})?$")
    for sender in (
        "0192:971203420",
        "0192:971203420:",
        "0192:971203420:123456789",
        "0000:000000000000000000",
    ):
        m = pattern.fullmatch(sender)
        assert m is not None
        groups = [g for g in (m.group(0), *m.groups()) if g and g.strip()]
        assert len(groups) in (3, 4)
        assert normalise(dict(SEED_EVENT, sender=sender))["sender_org_number"] == groups[-1]


# Through the HTTP source: the producer gets the service's answer (400 text/plain with the
# reason) for what the service refuses, 200 for what it accepts.
THROUGH_HTTP = [
    "logger-name-other",
    "null-receiver",
    "timestamp='2022-08-10T00:11:27+02:00'",
    "sender-missing",
    "orgnr-8-digits",
    "receiver-any-text",
    "timestamp='2022-08-10T00:11:27.246Z'",
]


async def test_http_source_answers_as_the_table(tmp_path) -> None:
    rows = {r.id: r for r in ROWS}
    async with inprocess_relay(tmp_path) as relay:
        await relay.start_http()
        for row_id in THROUGH_HTTP:
            row = rows[row_id]
            body = orjson.dumps(row.event())
            status, text, headers = await relay.post(body, **{"Content-Type": "application/json"})
            if isinstance(row.relay, dict):
                assert status == 200, (row_id, text)
            else:
                content_type = headers["Content-Type"].split(";")[0]
                assert (status, content_type, text.decode()) == (400, "text/plain", row.relay)
