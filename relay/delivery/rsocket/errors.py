"""What an RSocket failure means for the events of the request: the delivery loop's Outcome."""

from __future__ import annotations

import re

from rsocket.error_codes import ErrorCode
from rsocket.exceptions import RSocketProtocolError

from relay.delivery.rsocket.connection import ConnectionLost
from relay.delivery.sink import Outcome, Verdict
from relay.errors import one_line

# The real service's texts for a refused bearer (Spring Security 5.5, see upstream-protocol.md):
# "Access Denied", "Jwt expired at …", "Failed to validate the token", "An error occurred while
# attempting to decode the Jwt: …". All mean "this token", never "this event"; the looser forms
# are what other Spring versions and proxies say.
_TOKEN_REFUSED = re.compile(
    r"access denied|jwt expired|failed to validate the token|decode the jwt|"
    r"unauthori[sz]ed|unauthenticated|invalid[_ ]token|bearer|\bjwt\b|"
    r"token (?:is )?(?:expired|invalid|refused)|expired token",
    re.IGNORECASE,
)
# rsocket-java's answer to a route no handler serves: the configuration is wrong, not the events
_NO_HANDLER = re.compile(r"no handler for destination", re.IGNORECASE)


def classify(exc: BaseException) -> Outcome:
    """What a failed request means for its events (`RSocketConnection.request`'s exceptions)."""
    if isinstance(exc, ConnectionLost):
        return Outcome(Verdict.RETRY, "connection", one_line(str(exc)), connection_lost=True)
    if isinstance(exc, TimeoutError):
        return Outcome(Verdict.RETRY, "timeout", "no answer within upstream.request_timeout")
    if isinstance(exc, RSocketProtocolError):
        text = one_line(exc.data or "")
        code = exc.error_code
        if code == ErrorCode.INVALID:
            return Outcome(Verdict.INVALID, "invalid", text or "INVALID")
        if code == ErrorCode.REJECTED:
            # "will not process now" (overload): retried with backoff, the token is fine
            return Outcome(Verdict.RETRY, "overloaded", text or "REJECTED")
        if code in (ErrorCode.CONNECTION_ERROR, ErrorCode.CONNECTION_ERROR_NO_RETRY):
            return Outcome(Verdict.RETRY, "connection", text or code.name, connection_lost=True)
        name = getattr(code, "name", str(code))
        return Outcome(Verdict.RETRY, name.lower(), text or name)
    if isinstance(exc, RuntimeError):  # rsocket-py's form of APPLICATION_ERROR
        text = one_line(str(exc))
        if _TOKEN_REFUSED.search(text):
            return Outcome(Verdict.RETRY, "token", text)
        if _NO_HANDLER.search(text):
            return Outcome(Verdict.RETRY, "route", text)
        return Outcome(Verdict.REJECTED, "rejected", text or "APPLICATION_ERROR")
    return Outcome(Verdict.RETRY, "error", one_line(f"{type(exc).__name__}: {exc}"))
