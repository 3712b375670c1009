"""A Maskinporten stand-in: a real token endpoint that checks grants as strictly as the real one.

For tests and demos only. It verifies what Maskinporten verifies (algorithm, certificate chain
to a trusted CA or a registered kid, signature, audience, issuer, lifetime, clock skew, replay,
scopes, organisation number) and answers with Maskinporten's error shapes, so the relay's
client is exercised against the rules rather than against a mock that accepts anything.
Tests change :attr:`MaskinportenStandIn.faults` while it runs to simulate outages.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import hashlib
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import RSAAlgorithm

__all__ = [
    "ClientRegistration",
    "InvalidToken",
    "MaskinportenFaults",
    "MaskinportenStandIn",
]

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ALGORITHMS = ("RS256", "RS384", "RS512")
MAX_GRANT_LIFETIME = 120
MAX_CLOCK_SKEW = 10
# SEID v2 certificates carry the organisation number as organizationIdentifier "NTRNO-<orgnr>"
_ORGANIZATION_IDENTIFIER = x509.ObjectIdentifier("2.5.4.97")


# the signature is checked by pyjwt; every claim is then checked here, with Maskinporten's errors
_SIGNATURE_ONLY = dict.fromkeys(("verify_exp", "verify_iat", "verify_nbf", "verify_aud"), False)
_SIGNATURE_ONLY["verify_iss"] = False


@dataclass(frozen=True)
class ClientRegistration:
    """A client as registered in Maskinporten: its scopes, organisation and any kid keys."""

    scopes: frozenset[str]
    orgnr: str
    kid_keys: Mapping[str, bytes] = field(default_factory=dict)  # kid -> public key PEM


@dataclass
class MaskinportenFaults:
    """Behaviour tests switch at run time."""

    token_lifetime: float = 120.0
    unavailable: bool = False  # answer /token with 503
    delay: float = 0.0  # seconds to wait before answering /token


class InvalidToken(Exception):
    """An access token that a receiving service must refuse; the message says why."""


class _Refusal(Exception):
    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


class MaskinportenStandIn:
    """POST /token, GET /jwk and the metadata document; see the module docstring."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        clients: Mapping[str, ClientRegistration],
        trusted_ca_pems: Sequence[bytes],
        faults: MaskinportenFaults | None = None,
        clock: Callable[[], float] = time.time,
        token_audience: str = "eformidling",
        signing_key: rsa.RSAPrivateKey | None = None,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.token_audience = token_audience
        # a plain dict, so tests can register a client while the stand-in runs
        self.clients: dict[str, ClientRegistration] = dict(clients)
        self.faults = faults if faults is not None else MaskinportenFaults()
        self.issued = 0
        self.signers: list[str] = []  # per grant: "x5c serial <hex>" or "kid <kid>", for tests
        self._clock = clock
        self._trusted = [c for pem in trusted_ca_pems for c in x509.load_pem_x509_certificates(pem)]
        # a given key keeps tokens valid across restarts, as the real Maskinporten's keys do
        self._key = signing_key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
        der = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.kid = "standin-" + hashlib.sha256(der).hexdigest()[:16]
        # jti -> exp of the grant; an entry can go once its grant would be refused as expired
        self._seen_jti: dict[str, float] = {}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/token", self._handle_token)
        app.router.add_get("/jwk", self._handle_jwk)
        app.router.add_get("/.well-known/oauth-authorization-server", self._handle_metadata)
        return app

    @contextlib.asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Run :meth:`app` on a real socket; yields the base URL (``http://host:port``)."""
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            bound_host, bound_port = runner.addresses[0][:2]
            yield f"http://{bound_host}:{bound_port}"
        finally:
            await runner.cleanup()

    def jwks(self) -> dict:
        jwk = RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        jwk.update(kid=self.kid, use="sig", alg="RS256")
        return {"keys": [jwk]}

    def verify_access_token(
        self, token: str, *, scope: str | None = None, leeway: float = 0.0
    ) -> dict:
        """What a receiving service checks; returns the claims or raises InvalidToken.

        ``leeway``: seconds an expired token is still accepted (the status service allows 60).
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed") from None
        if header.get("kid") != self.kid:
            raise InvalidToken("unknown key")
        try:
            claims = jwt.decode(
                token,
                self._key.public_key(),
                algorithms=["RS256"],
                options=_SIGNATURE_ONLY,
            )
        except jwt.InvalidSignatureError:
            raise InvalidToken("bad signature") from None
        except jwt.PyJWTError:
            raise InvalidToken("malformed") from None
        if claims.get("iss") != self.issuer:
            raise InvalidToken("wrong issuer")
        exp = claims.get("exp")
        if not _is_number(exp) or exp + leeway <= self._clock():
            raise InvalidToken("expired")
        if scope is not None and scope not in str(claims.get("scope", "")).split():
            raise InvalidToken("wrong scope")
        return claims

    async def _handle_token(self, request: web.Request) -> web.Response:
        if self.faults.delay > 0:
            await asyncio.sleep(self.faults.delay)
        if self.faults.unavailable:
            return web.Response(status=503, text="503 Service Unavailable")
        form = await request.post()
        grant_type, assertion = form.get("grant_type"), form.get("assertion")
        try:
            body = self._grant(
                grant_type if isinstance(grant_type, str) else None,
                assertion if isinstance(assertion, str) else None,
            )
        except _Refusal as r:
            return web.json_response(
                {"error": r.error, "error_description": r.description}, status=400
            )
        return web.json_response(body)

    async def _handle_jwk(self, request: web.Request) -> web.Response:
        return web.json_response(self.jwks())

    async def _handle_metadata(self, request: web.Request) -> web.Response:
        base = f"{request.scheme}://{request.host}"
        return web.json_response(
            {
                "issuer": self.issuer,
                "token_endpoint": f"{base}/token",
                "jwks_uri": f"{base}/jwk",
                "grant_types_supported": [GRANT_TYPE],
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                "token_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
            }
        )

    def _grant(self, grant_type: str | None, assertion: str | None) -> dict[str, Any]:
        if not grant_type or not assertion:
            raise _Refusal("invalid_request", "grant_type and assertion are required")
        if grant_type != GRANT_TYPE:
            raise _Refusal("unsupported_grant_type", f"grant_type must be {GRANT_TYPE}")
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise _Refusal("invalid_grant", "Invalid assertion: not a JWT") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise _Refusal(
                "invalid_grant",
                f"Invalid assertion: alg {str(alg)[:20]!r} is not supported; use "
                "RS256, RS384 or RS512",
            )
        iss = unverified.get("iss")
        client = self.clients.get(iss) if isinstance(iss, str) else None
        if client is None:
            raise _Refusal("invalid_client", "Invalid client: iss is not a registered client id")

        if "x5c" in header:
            key, orgnrs = self._certificate_key(header["x5c"])
            if client.orgnr not in orgnrs:
                raise _Refusal(
                    "invalid_client",
                    "Invalid client: the certificate does not belong to the client's "
                    f"organisation {client.orgnr}",
                )
            amr = "virksomhetssertifikat"
            leaf = x509.load_der_x509_certificate(base64.b64decode(header["x5c"][0]))
            signer = f"x5c serial {leaf.serial_number:x}"
        elif "kid" in header:
            pem = client.kid_keys.get(header["kid"]) if isinstance(header["kid"], str) else None
            if pem is None:
                raise _Refusal("invalid_client", "Invalid client: kid is not registered")
            key = serialization.load_pem_public_key(pem)
            amr = "private_key_jwt"
            signer = f"kid {header['kid']}"
        else:
            raise _Refusal("invalid_grant", "Invalid assertion: the header needs x5c or kid")
        if not isinstance(key, rsa.RSAPublicKey):
            raise _Refusal("invalid_grant", "Invalid assertion: the signing key is not RSA")

        try:
            claims = jwt.decode(
                assertion,
                key,
                algorithms=[alg],
                options=_SIGNATURE_ONLY,
            )
        except jwt.InvalidSignatureError:
            raise _Refusal("invalid_grant", "Invalid assertion: bad signature") from None
        except jwt.PyJWTError:
            raise _Refusal("invalid_grant", "Invalid assertion: cannot be verified") from None
        self._check_claims(claims)

        scope = claims.get("scope")
        requested = scope.split() if isinstance(scope, str) else []
        if not requested:
            raise _Refusal("invalid_scope", "Scope is missing")
        for s in requested:
            if s not in client.scopes:
                raise _Refusal("invalid_scope", f"Scope {s} is not allowed for this client")
        self.signers = [*self.signers[-999:], signer]  # bounded: a stand-in may run for days
        return self._issue(iss, client, " ".join(requested), amr)

    def _check_claims(self, claims: dict[str, Any]) -> None:
        now = self._clock()
        if claims.get("aud") != self.audience:
            # strict, as Maskinporten is: a missing trailing slash is a different audience
            raise _Refusal("invalid_grant", f"Invalid assertion: aud must be {self.audience}")
        iat, exp = claims.get("iat"), claims.get("exp")
        if not _is_number(iat) or not _is_number(exp):
            raise _Refusal("invalid_grant", "Invalid assertion: iat and exp are required")
        if exp - iat > MAX_GRANT_LIFETIME:
            raise _Refusal(
                "invalid_grant",
                f"Invalid assertion: exp - iat must be at most {MAX_GRANT_LIFETIME} seconds",
            )
        if abs(iat - now) > MAX_CLOCK_SKEW:
            raise _Refusal(
                "invalid_grant",
                f"Invalid assertion: iat is more than {MAX_CLOCK_SKEW} seconds from our clock",
            )
        if exp <= now:
            raise _Refusal("invalid_grant", "Invalid assertion: the assertion has expired")
        jti = claims.get("jti")
        if jti is not None:
            if not isinstance(jti, str) or jti in self._seen_jti:
                raise _Refusal("invalid_grant", "Invalid assertion: jti has been used before")
            self._forget_old_jti(now)
            self._seen_jti[jti] = exp

    def _forget_old_jti(self, now: float) -> None:
        stale = [j for j, exp in self._seen_jti.items() if exp + MAX_CLOCK_SKEW < now]
        for j in stale:
            del self._seen_jti[j]

    def _certificate_key(self, x5c: object) -> tuple[object, set[str]]:
        """The leaf's public key and organisation numbers, once the chain checks out."""
        if not isinstance(x5c, list) or not x5c or not all(isinstance(c, str) for c in x5c):
            raise _Refusal("invalid_grant", "Invalid assertion: x5c must list certificates")
        try:
            chain = [
                x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in x5c
            ]
        except (ValueError, binascii.Error):
            raise _Refusal(
                "invalid_grant", "Invalid assertion: x5c holds a bad certificate"
            ) from None
        now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
        for cert in chain:
            if now > cert.not_valid_after_utc:
                raise _Refusal(
                    "invalid_grant",
                    f"Invalid certificate: {cert.subject.rfc4514_string()} expired "
                    f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC",
                )
            if now < cert.not_valid_before_utc:
                raise _Refusal(
                    "invalid_grant",
                    f"Invalid certificate: {cert.subject.rfc4514_string()} is not valid yet",
                )
        if not self._chains_to_trusted(chain):
            raise _Refusal(
                "invalid_grant",
                "Invalid certificate: not issued by a trusted certificate authority",
            )
        leaf = chain[0]
        orgnrs = {a.value for a in leaf.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)}
        for a in leaf.subject.get_attributes_for_oid(_ORGANIZATION_IDENTIFIER):
            orgnrs.add(str(a.value).removeprefix("NTRNO-"))
        return leaf.public_key(), {str(o) for o in orgnrs}

    def _chains_to_trusted(self, chain: list[x509.Certificate]) -> bool:
        current, rest = chain[0], chain[1:]
        while True:
            if any(_issued_by(current, ca) for ca in self._trusted):
                return True
            issuer = next((c for c in rest if _is_ca(c) and _issued_by(current, c)), None)
            if issuer is None:
                return False
            rest.remove(issuer)
            current = issuer

    def _issue(self, client_id: str, client: ClientRegistration, scope: str, amr: str) -> dict:
        now = self._clock()
        lifetime = self.faults.token_lifetime
        claims = {
            "iss": self.issuer,
            "client_amr": amr,
            "token_type": "Bearer",
            "aud": self.token_audience,
            "scope": scope,
            "client_id": client_id,
            "consumer": {"authority": "iso6523-actorid-upis", "ID": f"0192:{client.orgnr}"},
            "iat": int(now),
            "exp": math.ceil(now + lifetime),
            "jti": str(uuid.uuid4()),
        }
        token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})
        self.issued += 1
        return {
            "access_token": token,
            "token_type": "Bearer",
            # rounded down: a client trusting it never holds the token past its exp
            "expires_in": max(1, int(lifetime)),
            "scope": scope,
        }


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
