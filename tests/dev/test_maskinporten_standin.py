"""The Maskinporten stand-in on a real port: what it grants, and everything it refuses."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from relay.auth.credentials import load_credentials
from relay.auth.grant import GRANT_TYPE, make_assertion
from relay.config.model import MaskinportenConfig
from relay.dev.certs import TestPki, make_test_pki
from relay.dev.maskinporten import (
    ClientRegistration,
    InvalidToken,
    MaskinportenFaults,
    MaskinportenStandIn,
)

ISSUER = "https://test.maskinporten.no/"
AUDIENCE = "https://test.maskinporten.no/"
CLIENT = "MOVE_IP_991825827"
OTHER_CLIENT = "MOVE_IP_910000000"
SCOPE = "eformidling:dpo"


@dataclass
class Pkis:
    good: TestPki
    other_ca: TestPki  # same organisation, CA the stand-in does not trust
    expired: TestPki  # trusted CA, leaf expired


@pytest.fixture(scope="module")
def pkis(tmp_path_factory: pytest.TempPathFactory) -> Pkis:
    return Pkis(
        good=make_test_pki(tmp_path_factory.mktemp("good")),
        other_ca=make_test_pki(tmp_path_factory.mktemp("other")),
        expired=make_test_pki(tmp_path_factory.mktemp("expired"), expired=True),
    )


class Clock:
    """Real time plus an offset a test can move forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Running:
    standin: MaskinportenStandIn
    url: str
    clock: Clock


@pytest.fixture
async def running(pkis: Pkis) -> AsyncIterator[Running]:
    clock = Clock()
    standin = MaskinportenStandIn(
        issuer=ISSUER,
        audience=AUDIENCE,
        clients={
            CLIENT: ClientRegistration(
                scopes=frozenset({SCOPE, "eformidling:dpe"}),
                orgnr=pkis.good.orgnr,
                kid_keys={pkis.good.kid: pkis.good.kid_pub.read_bytes()},
            ),
            OTHER_CLIENT: ClientRegistration(scopes=frozenset({SCOPE}), orgnr="910000000"),
        },
        trusted_ca_pems=[pkis.good.ca_cert_pem, pkis.expired.ca_cert_pem],
        faults=MaskinportenFaults(),
        clock=clock,
    )
    async with standin.serve() as url:
        yield Running(standin, url, clock)


async def post_grant(url: str, assertion: str | None, grant_type: str | None = GRANT_TYPE):
    form = {}
    if grant_type is not None:
        form["grant_type"] = grant_type
    if assertion is not None:
        form["assertion"] = assertion
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/token", data=form) as resp,
    ):
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()


def private_key(path):
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def x5c_of(pki: TestPki) -> list[str]:
    cert = x509.load_pem_x509_certificate(pki.leaf_cert.read_bytes())
    return [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]


def grant(
    pki: TestPki,
    *,
    key_path=None,
    headers: dict | None = None,
    alg: str = "RS256",
    key: object = None,
    **claims: object,
) -> str:
    """A grant as a client would build it by hand, with any field overridden."""
    now = int(time.time())
    body = {
        "aud": AUDIENCE,
        "iss": CLIENT,
        "scope": SCOPE,
        "iat": now,
        "exp": now + 120,
        "jti": str(uuid.uuid4()),
    }
    body.update(claims)
    if key is None:
        key = private_key(key_path or pki.leaf_key)
    return jwt.encode(
        body, key, algorithm=alg, headers={"x5c": x5c_of(pki)} if headers is None else headers
    )


def config(url: str, **fields: str) -> MaskinportenConfig:
    return MaskinportenConfig(
        token_url=f"{url}/token", audience=AUDIENCE, client_id=CLIENT, scope=SCOPE, **fields
    )


async def test_x5c_grant_from_keystore_is_granted(running: Running, pkis: Pkis) -> None:
    cfg = config(running.url, keystore=str(pkis.good.keystore))
    creds = load_credentials(cfg, environ={"RELAY_KEYSTORE_PASSWORD": pkis.good.password})
    assertion = make_assertion(creds, client_id=CLIENT, audience=AUDIENCE, scope=SCOPE)

    status, body = await post_grant(running.url, assertion)

    assert status == 200, body
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 120
    assert body["scope"] == SCOPE
    claims = running.standin.verify_access_token(body["access_token"], scope=SCOPE)
    assert claims["client_amr"] == "virksomhetssertifikat"
    assert claims["client_id"] == CLIENT
    assert claims["consumer"] == {"authority": "iso6523-actorid-upis", "ID": "0192:991825827"}
    assert claims["iss"] == ISSUER
    assert claims["aud"] == "eformidling"
    assert claims["token_type"] == "Bearer"
    assert claims["exp"] - claims["iat"] in (120, 121)
    assert running.standin.issued == 1


async def test_x5c_grant_from_pem_files_is_granted(running: Running, pkis: Pkis) -> None:
    cfg = config(running.url, key_file=str(pkis.good.leaf_key), cert_file=str(pkis.good.leaf_cert))
    creds = load_credentials(cfg, environ={})
    assertion = make_assertion(
        creds, client_id=CLIENT, audience=AUDIENCE, scope="eformidling:dpo eformidling:dpe"
    )

    status, body = await post_grant(running.url, assertion)

    assert status == 200, body
    assert body["scope"] == "eformidling:dpo eformidling:dpe"
    running.standin.verify_access_token(body["access_token"], scope="eformidling:dpe")


async def test_kid_grant_is_granted(running: Running, pkis: Pkis) -> None:
    cfg = config(running.url, key_file=str(pkis.good.kid_key), kid=pkis.good.kid)
    creds = load_credentials(cfg, environ={})
    assertion = make_assertion(creds, client_id=CLIENT, audience=AUDIENCE, scope=SCOPE)

    status, body = await post_grant(running.url, assertion)

    assert status == 200, body
    claims = running.standin.verify_access_token(body["access_token"])
    assert claims["client_amr"] == "private_key_jwt"


def _now() -> int:
    return int(time.time())


VIOLATIONS: list[tuple[str, Callable[[Pkis], str], str, str]] = [
    (
        "audience without trailing slash",
        lambda p: grant(p.good, aud="https://test.maskinporten.no"),
        "invalid_grant",
        "aud",
    ),
    ("unknown issuer", lambda p: grant(p.good, iss="MOVE_IP_000000000"), "invalid_client", "iss"),
    (
        "lifetime over 120 s",
        lambda p: grant(p.good, iat=_now(), exp=_now() + 121),
        "invalid_grant",
        "120",
    ),
    (
        "iat 60 s in the past",
        lambda p: grant(p.good, iat=_now() - 60, exp=_now() + 30),
        "invalid_grant",
        "iat",
    ),
    (
        "iat 60 s in the future",
        lambda p: grant(p.good, iat=_now() + 60, exp=_now() + 90),
        "invalid_grant",
        "iat",
    ),
    (
        "assertion expired",
        lambda p: grant(p.good, iat=_now() - 5, exp=_now() - 1),
        "invalid_grant",
        "expired",
    ),
    (
        "scope not allowed",
        lambda p: grant(p.good, scope="eformidling:dpo eformidling:dpi"),
        "invalid_scope",
        "eformidling:dpi",
    ),
    ("no scope", lambda p: grant(p.good, scope=""), "invalid_scope", "Scope"),
    (
        "alg none",
        lambda p: grant(p.good, alg="none", key=""),  # pyjwt takes "" as no key
        "invalid_grant",
        "alg",
    ),
    (
        "alg HS256",
        lambda p: grant(p.good, alg="HS256", key="a-shared-secret-of-32-bytes-long!"),
        "invalid_grant",
        "alg",
    ),
    (
        "certificate from an untrusted CA",
        lambda p: grant(p.other_ca),
        "invalid_grant",
        "trusted",
    ),
    ("expired certificate", lambda p: grant(p.expired), "invalid_grant", "expired"),
    (
        "certificate of another organisation",
        lambda p: grant(p.good, iss=OTHER_CLIENT),
        "invalid_client",
        "organisation",
    ),
    (
        "signed by another key than the certificate's",
        lambda p: grant(p.good, key_path=p.good.kid_key),
        "invalid_grant",
        "signature",
    ),
    (
        "kid not registered",
        lambda p: grant(p.good, key_path=p.good.kid_key, headers={"kid": "unknown-kid"}),
        "invalid_client",
        "kid",
    ),
    (
        "kid of another client",
        lambda p: grant(
            p.good, key_path=p.good.kid_key, headers={"kid": p.good.kid}, iss=OTHER_CLIENT
        ),
        "invalid_client",
        "kid",
    ),
    ("neither x5c nor kid", lambda p: grant(p.good, headers={}), "invalid_grant", "x5c or kid"),
    ("not a JWT", lambda p: "not-a-jwt", "invalid_grant", "JWT"),
]


@pytest.mark.parametrize(
    ("make", "error", "mentions"),
    [v[1:] for v in VIOLATIONS],
    ids=[v[0] for v in VIOLATIONS],
)
async def test_violations_are_refused_like_maskinporten(
    running: Running, pkis: Pkis, make: Callable[[Pkis], str], error: str, mentions: str
) -> None:
    status, body = await post_grant(running.url, make(pkis))

    assert status == 400
    assert body["error"] == error, body
    assert mentions in body["error_description"]
    assert running.standin.issued == 0


async def test_a_reused_jti_is_refused(running: Running, pkis: Pkis) -> None:
    jti = str(uuid.uuid4())
    first = await post_grant(running.url, grant(pkis.good, jti=jti))
    again = await post_grant(running.url, grant(pkis.good, jti=jti))

    assert first[0] == 200
    assert again[0] == 400
    assert again[1]["error"] == "invalid_grant"
    assert "jti" in again[1]["error_description"]


@pytest.mark.parametrize(
    ("grant_type", "with_assertion", "error"),
    [
        ("client_credentials", True, "unsupported_grant_type"),
        (None, True, "invalid_request"),
        (GRANT_TYPE, False, "invalid_request"),
    ],
)
async def test_malformed_requests(
    running: Running, pkis: Pkis, grant_type: str | None, with_assertion: bool, error: str
) -> None:
    assertion = grant(pkis.good) if with_assertion else None
    status, body = await post_grant(running.url, assertion, grant_type)
    assert (status, body["error"]) == (400, error)


async def test_unavailable_answers_503(running: Running, pkis: Pkis) -> None:
    running.standin.faults.unavailable = True
    status, _ = await post_grant(running.url, grant(pkis.good))
    assert status == 503
    running.standin.faults.unavailable = False
    status, _ = await post_grant(running.url, grant(pkis.good))
    assert status == 200


async def test_issued_token_verifies_with_the_published_jwks(running: Running, pkis: Pkis) -> None:
    _, body = await post_grant(running.url, grant(pkis.good))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{running.url}/.well-known/oauth-authorization-server") as r:
            metadata = await r.json()
        async with session.get(metadata["jwks_uri"]) as r:
            jwks = await r.json()

    assert metadata["issuer"] == ISSUER
    assert metadata["token_endpoint"] == f"{running.url}/token"
    assert metadata["jwks_uri"] == f"{running.url}/jwk"
    assert GRANT_TYPE in metadata["grant_types_supported"]
    assert metadata["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert jwks == running.standin.jwks()
    token = body["access_token"]
    key = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(token)["kid"]]
    claims = jwt.decode(token, key.key, algorithms=["RS256"], audience="eformidling", issuer=ISSUER)
    assert claims["scope"] == SCOPE


async def test_verify_access_token_refuses_expired_tampered_and_wrong_scope(
    running: Running, pkis: Pkis
) -> None:
    running.standin.faults.token_lifetime = 3
    status, body = await post_grant(running.url, grant(pkis.good))
    assert (status, body["expires_in"]) == (200, 3)
    token = body["access_token"]
    running.standin.verify_access_token(token, scope=SCOPE)

    with pytest.raises(InvalidToken, match="wrong scope"):
        running.standin.verify_access_token(token, scope="eformidling:dpe")
    header, payload, signature = token.split(".")
    forged = jwt.decode(token, options={"verify_signature": False})
    forged["scope"] = "eformidling:dpe"
    forged_payload = base64.urlsafe_b64encode(json.dumps(forged).encode())
    tampered = ".".join([header, forged_payload.decode().rstrip("="), signature])
    with pytest.raises(InvalidToken, match="bad signature"):
        running.standin.verify_access_token(tampered)

    running.clock.offset = 5
    with pytest.raises(InvalidToken, match="expired"):
        running.standin.verify_access_token(token, scope=SCOPE)
