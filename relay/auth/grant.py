"""The JWT-bearer grant (RFC 7523) that Maskinporten exchanges for an access token."""

from __future__ import annotations

import time
import uuid

import jwt

from relay.auth.credentials import Credentials

__all__ = ["GRANT_TYPE", "MAX_ASSERTION_LIFETIME", "make_assertion"]

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# Maskinporten refuses grants with exp - iat above this
MAX_ASSERTION_LIFETIME = 120


def make_assertion(
    creds: Credentials,
    *,
    client_id: str,
    audience: str,
    scope: str,
    now: float | None = None,
    lifetime: int = MAX_ASSERTION_LIFETIME,
) -> str:
    """A signed, single-use grant; every call has a new jti, so never reuse the result."""
    if not 0 < lifetime <= MAX_ASSERTION_LIFETIME:
        raise ValueError(f"assertion lifetime must be 1..{MAX_ASSERTION_LIFETIME} s")
    if creds.kid is not None:
        headers: dict[str, object] = {"kid": creds.kid}
    elif creds.x5c:
        headers = {"x5c": list(creds.x5c)}
    else:
        raise ValueError("credentials have neither a certificate chain nor a kid")
    iat = int(time.time() if now is None else now)
    claims = {
        "aud": audience,
        "iss": client_id,
        "scope": scope,
        "iat": iat,
        "exp": iat + lifetime,
        "jti": str(uuid.uuid4()),
    }
    return jwt.encode(claims, creds.private_key, algorithm="RS256", headers=headers)
