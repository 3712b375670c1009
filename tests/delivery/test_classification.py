"""What each sink makes of the upstream's answers: the verdict the delivery loop acts on."""

from __future__ import annotations

import pytest
from rsocket.error_codes import ErrorCode
from rsocket.exceptions import RSocketProtocolError

from relay.delivery.http_sink import classify_status
from relay.delivery.rsocket.connection import ConnectionLost
from relay.delivery.rsocket.errors import classify
from relay.delivery.sink import Verdict

RETRY, REJECTED, INVALID, DELIVERED = (
    Verdict.RETRY,
    Verdict.REJECTED,
    Verdict.INVALID,
    Verdict.DELIVERED,
)


@pytest.mark.parametrize(
    ("status", "verdict", "reason"),
    [
        (200, DELIVERED, ""),
        (204, DELIVERED, ""),
        (400, INVALID, "invalid"),
        (422, INVALID, "invalid"),
        (413, INVALID, "too_large"),
        (401, RETRY, "token"),
        (403, RETRY, "http_403"),  # a missing scope: the configuration, not the events
        (404, RETRY, "http_404"),
        (429, RETRY, "http_429"),
        (503, RETRY, "http_503"),
        (418, RETRY, "http_418"),
    ],
)
def test_http_status(status: int, verdict: Verdict, reason: str) -> None:
    outcome = classify_status(status, "Sender field (x) is not valid\nISO6523 format.", 7.0)
    assert (outcome.verdict, outcome.reason) == (verdict, reason)
    if verdict is not DELIVERED:
        assert "\n" not in outcome.error
    if verdict is RETRY and reason != "token":
        assert outcome.retry_after == 7.0


def test_http_error_without_a_body_names_the_status() -> None:
    assert classify_status(502, "", None).error == "HTTP 502"


@pytest.mark.parametrize(
    ("exc", "verdict", "reason"),
    [
        (ConnectionLost("closed by the upstream"), RETRY, "connection"),
        (TimeoutError(), RETRY, "timeout"),
        (RSocketProtocolError(ErrorCode.INVALID, "no"), INVALID, "invalid"),
        (RSocketProtocolError(ErrorCode.REJECTED, "busy"), RETRY, "overloaded"),
        (RSocketProtocolError(ErrorCode.CONNECTION_ERROR, ""), RETRY, "connection"),
        (RSocketProtocolError(ErrorCode.CANCELED, ""), RETRY, "canceled"),
        # APPLICATION_ERROR, as rsocket-py raises it, in the real service's words
        (RuntimeError("Access Denied"), RETRY, "token"),
        (RuntimeError("Jwt expired at 2026-12-01T10:00:00Z"), RETRY, "token"),
        (RuntimeError("Failed to validate the token"), RETRY, "token"),
        (RuntimeError("No handler for destination 'log-fire2'"), RETRY, "route"),
        (RuntimeError("some other application error"), REJECTED, "rejected"),
        (ValueError("a bug"), RETRY, "error"),
    ],
)
def test_rsocket_error(exc: BaseException, verdict: Verdict, reason: str) -> None:
    outcome = classify(exc)
    assert (outcome.verdict, outcome.reason) == (verdict, reason)
    assert outcome.connection_lost == (reason == "connection")
