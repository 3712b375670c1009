"""The example status event from the public eFormidling documentation ("Meldingsstatus API").

One definition for the demo, the tests and the benchmarks.
"""

SEED_EVENT: dict[str, str] = {
    "conversation_id": "3233d263-30d0-4cd4-9e38-ff62a978d58e",
    "receiver_org_number": "991825827",
    "@timestamp": "2022-08-10T00:11:27.246Z",
    "service_identifier": "DPE",
    "sender": "0192:971203420",
    "status": "LEVERT",
    "orgnr": "971203420",
    "receiver": "0192:991825827",
    "message_id": "65f237bc-7d64-45cb-8f4d-3d81345b4668",
    "process_identifier": "urn:no:difi:profile:einnsyn:journalpost:ver1.0",
    "sender_org_number": "971203420",
    "document_identifier": "urn:no:difi:einnsyn:xsd::publisering",
}
