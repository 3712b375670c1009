"""Token checks of the status-service stand-in, answered with Spring Security 5.5's texts.

The real service checks a JWT's signature and ``exp``/``nbf`` (60 s clock skew) on every request
and nothing else; its refusals carry the exception's message, and the relay decides what to do
from that text (a new token, a back-off, not-ready). So the texts here are Spring's, verbatim:

- ``Access Denied`` — no token at all (or a rule such as a required scope not met);
- ``Jwt expired at <ISO instant>`` — ``exp`` more than 60 s ago;
- ``Failed to validate the token`` — bad signature, a key or issuer the service does not know;
- ``An error occurred while attempting to decode the Jwt: …`` — not a JWT at all.

Never the token itself in a text or a log line.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = [
    "ACCESS_DENIED",
    "CLOCK_SKEW",
    "FAILED_TO_VALIDATE",
    "TokenRefused",
    "decode_error",
    "expired_text",
    "refusal_text",
]

ACCESS_DENIED = "Access Denied"
FAILED_TO_VALIDATE = "Failed to validate the token"
CLOCK_SKEW = 60.0
_DECODE = "An error occurred while attempting to decode the Jwt: "


class TokenRefused(PermissionError):
    """A token the service refuses; str() is the text the service answers."""


def expired_text(exp: float) -> str:
    """Spring's JwtTimestampValidator text; java.time.Instant prints whole seconds like this."""
    return f"Jwt expired at {datetime.fromtimestamp(int(exp), UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"


def decode_error(token: str) -> str | None:
    """Nimbus' parse error for a token that is not a JWT, as Spring wraps it; None if it parses."""
    parts = token.split(".")
    if len(parts) < 3:
        return _DECODE + "Invalid JWT serialization: Missing dot delimiter(s)"
    try:
        header = orjson.loads(_b64(parts[0]))
    except (ValueError, orjson.JSONDecodeError):
        return _DECODE + "Invalid unsecured/JWS/JWE header: Invalid JSON"
    if not isinstance(header, dict) or "alg" not in header:
        return _DECODE + 'Invalid unsecured/JWS/JWE header: Missing "alg" in header JSON object'
    try:
        claims = orjson.loads(_b64(parts[1]))
    except (ValueError, orjson.JSONDecodeError):
        return _DECODE + "Payload of JWS object is not a valid JSON object"
    if not isinstance(claims, dict):
        return _DECODE + "Payload of JWS object is not a valid JSON object"
    return None


def unverified_exp(token: str) -> float | None:
    """The ``exp`` claim without checking the signature (only to word an expiry)."""
    try:
        exp = orjson.loads(_b64(token.split(".")[1])).get("exp")
    except (ValueError, IndexError, AttributeError, orjson.JSONDecodeError):
        return None
    return exp if type(exp) in (int, float) else None


def refusal_text(token: str, err: Exception, now: float) -> str:
    """Spring's text for a token that ``err`` says the verifier refused.

    The verifier (ours or a test's) may raise anything; what it means is read from the token
    itself where that is possible, so every verifier gets the service's texts.
    """
    decoding = decode_error(token)
    if decoding is not None:
        return decoding
    exp = unverified_exp(token)
    said = f"{type(err).__name__} {err}".lower()
    if "expire" in said and exp is not None:
        return expired_text(exp)
    if exp is not None and exp + CLOCK_SKEW <= now and "signature" not in said:
        return expired_text(exp)
    return FAILED_TO_VALIDATE


def check_expiry(claims: Mapping[str, Any], now: float) -> None:
    """Raise TokenRefused once ``exp`` is more than the allowed skew in the past."""
    exp = claims.get("exp")
    if type(exp) in (int, float) and exp + CLOCK_SKEW <= now:
        raise TokenRefused(expired_text(exp))


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
