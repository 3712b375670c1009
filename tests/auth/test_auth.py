"""Credentials, grants and the token provider, against the Maskinporten stand-in on a real port."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from relay.auth.credentials import Credentials, load_credentials
from relay.auth.grant import make_assertion
from relay.auth.inspect import fetch_and_describe
from relay.auth.tokens import TokenProvider
from relay.config.model import MaskinportenConfig
from relay.dev.certs import TestPki, make_test_pki
from relay.dev.maskinporten import ClientRegistration, MaskinportenFaults, MaskinportenStandIn
from relay.errors import UserError
from tests.helpers import eventually

AUDIENCE = "https://test.maskinporten.no/"
CLIENT = "MOVE_IP_991825827"
UNREGISTERED = "MOVE_IP_000000000"
SCOPE = "eformidling:dpo"
PASSWORD_ENV = "RELAY_KEYSTORE_PASSWORD"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"), password="s3cret-Keystore-pw")


@pytest.fixture(scope="module")
def expired_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("expired"), expired=True)


def leaf_der(pki: TestPki) -> bytes:
    cert = x509.load_pem_x509_certificate(pki.leaf_cert.read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)


def keystore_cfg(pki: TestPki, **fields: str) -> MaskinportenConfig:
    return MaskinportenConfig(client_id=CLIENT, keystore=str(pki.keystore), **fields)


def pem_cfg(pki: TestPki, **fields: str) -> MaskinportenConfig:
    return MaskinportenConfig(
        client_id=CLIENT, key_file=str(pki.leaf_key), cert_file=str(pki.leaf_cert), **fields
    )


def user_error(call: Callable[[], object]) -> str:
    """The message of the UserError `call` raises, checked to be one line."""
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    assert message
    return message


# credentials


def test_keystore_with_password_from_the_environment(pki: TestPki) -> None:
    creds = load_credentials(keystore_cfg(pki), environ={PASSWORD_ENV: pki.password})

    assert creds.kid is None
    assert creds.x5c is not None and len(creds.x5c) == 2  # leaf, then the CA from the keystore
    assert base64.b64decode(creds.x5c[0]) == leaf_der(pki)
    assert "O=Test Org" in creds.subject and "991825827" in creds.subject
    assert creds.not_after is not None
    assert creds.not_after > dt.datetime.now(dt.UTC) + dt.timedelta(days=300)


def test_keystore_with_password_from_a_file(pki: TestPki, tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text(pki.password + "\n")
    cfg = keystore_cfg(pki, keystore_password_file=str(password_file))

    creds = load_credentials(cfg, environ={})

    assert creds.x5c is not None
    assert base64.b64decode(creds.x5c[0]) == leaf_der(pki)


def test_pem_key_and_certificate(pki: TestPki) -> None:
    creds = load_credentials(pem_cfg(pki), environ={})

    assert creds.x5c is not None and len(creds.x5c) == 1
    assert base64.b64decode(creds.x5c[0]) == leaf_der(pki)
    assert creds.kid is None


def test_pem_key_and_kid(pki: TestPki) -> None:
    cfg = MaskinportenConfig(client_id=CLIENT, key_file=str(pki.kid_key), kid=pki.kid)

    creds = load_credentials(cfg, environ={})

    assert (creds.kid, creds.x5c, creds.not_after) == (pki.kid, None, None)
    assert pki.kid in creds.subject


def test_keystore_with_kid_sends_the_kid(pki: TestPki) -> None:
    creds = load_credentials(keystore_cfg(pki, kid="k1"), environ={PASSWORD_ENV: pki.password})
    assert (creds.kid, creds.x5c) == ("k1", None)


def test_private_key_files_are_private(pki: TestPki) -> None:
    for path in (pki.leaf_key, pki.keystore, pki.kid_key):
        assert path.stat().st_mode & 0o777 == 0o600


def test_wrong_keystore_password_is_one_line_without_the_password(pki: TestPki) -> None:
    wrong = "hunter2-not-it"
    message = user_error(lambda: load_credentials(keystore_cfg(pki), environ={PASSWORD_ENV: wrong}))

    assert message == (
        f"maskinporten.keystore {pki.keystore}: wrong password (from RELAY_KEYSTORE_PASSWORD)"
    )
    shown = wrong in message or pki.password in message
    assert not shown


def test_wrong_password_from_a_file_names_the_file(pki: TestPki, tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text("hunter2-not-it\n")
    cfg = keystore_cfg(pki, keystore_password_file=str(password_file))

    message = user_error(lambda: load_credentials(cfg, environ={}))

    assert "wrong password" in message and str(password_file) in message
    shown = "hunter2" in message
    assert not shown


def test_missing_password_variable(pki: TestPki) -> None:
    message = user_error(lambda: load_credentials(keystore_cfg(pki), environ={}))
    assert PASSWORD_ENV in message and "keystore_password_file" in message


@pytest.mark.parametrize("source", ["keystore", "pem"])
def test_expired_certificate(expired_pki: TestPki, source: str) -> None:
    cfg = keystore_cfg(expired_pki) if source == "keystore" else pem_cfg(expired_pki)
    message = user_error(
        lambda: load_credentials(cfg, environ={PASSWORD_ENV: expired_pki.password})
    )
    assert "expired" in message
    expired_at = x509.load_pem_x509_certificate(expired_pki.leaf_cert.read_bytes())
    assert expired_at.not_valid_after_utc.strftime("%Y-%m-%d") in message


def test_certificate_not_yet_valid(pki: TestPki) -> None:
    last_year = dt.datetime.now(dt.UTC) - dt.timedelta(days=365)
    message = user_error(lambda: load_credentials(pem_cfg(pki), environ={}, now=last_year))
    assert "not valid until" in message


def test_key_not_matching_the_certificate(pki: TestPki) -> None:
    cfg = MaskinportenConfig(
        client_id=CLIENT, key_file=str(pki.kid_key), cert_file=str(pki.leaf_cert)
    )
    message = user_error(lambda: load_credentials(cfg, environ={}))
    assert "does not match" in message
    assert "PRIVATE KEY" not in message


@pytest.mark.parametrize(
    ("fields", "setting"),
    [
        ({"keystore": "/nonexistent/keystore.p12"}, "maskinporten.keystore"),
        ({"key_file": "/nonexistent/leaf.key", "kid": "k"}, "maskinporten.key_file"),
    ],
)
def test_missing_file_names_the_setting_and_path(fields: dict[str, str], setting: str) -> None:
    cfg = MaskinportenConfig(client_id=CLIENT, **fields)
    message = user_error(lambda: load_credentials(cfg, environ={PASSWORD_ENV: "x"}))
    path = next(v for v in fields.values() if v.startswith("/"))
    assert message.startswith(f"{setting} {path}: cannot read")


def test_missing_certificate_file(pki: TestPki) -> None:
    cfg = MaskinportenConfig(
        client_id=CLIENT, key_file=str(pki.leaf_key), cert_file="/nonexistent/leaf.pem"
    )
    message = user_error(lambda: load_credentials(cfg, environ={}))
    assert message.startswith("maskinporten.cert_file /nonexistent/leaf.pem: cannot read")


def test_nothing_configured() -> None:
    message = user_error(lambda: load_credentials(MaskinportenConfig(client_id=CLIENT)))
    assert message == "maskinporten: set keystore, or key_file with cert_file or kid"


def test_key_file_alone(pki: TestPki) -> None:
    cfg = MaskinportenConfig(client_id=CLIENT, key_file=str(pki.leaf_key))
    assert "cert_file" in user_error(lambda: load_credentials(cfg, environ={}))


def test_empty_client_id(pki: TestPki) -> None:
    cfg = MaskinportenConfig(key_file=str(pki.leaf_key), cert_file=str(pki.leaf_cert))
    assert "client_id" in user_error(lambda: load_credentials(cfg, environ={}))


def test_non_rsa_key(tmp_path: Path) -> None:
    key_file = tmp_path / "ec.key"
    key_file.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cfg = MaskinportenConfig(client_id=CLIENT, key_file=str(key_file), kid="k")
    message = user_error(lambda: load_credentials(cfg, environ={}))
    assert "not RSA" in message and "BEGIN" not in message


def test_pem_given_as_keystore(pki: TestPki) -> None:
    cfg = MaskinportenConfig(client_id=CLIENT, keystore=str(pki.leaf_cert))
    message = user_error(lambda: load_credentials(cfg, environ={PASSWORD_ENV: "x"}))
    assert "not a PKCS#12 keystore" in message


def test_credentials_repr_hides_the_key(pki: TestPki) -> None:
    creds = load_credentials(pem_cfg(pki), environ={})
    assert "private_key" not in repr(creds)


# the grant


def decode_grant(assertion: str, pki: TestPki) -> dict:
    cert = x509.load_pem_x509_certificate(pki.leaf_cert.read_bytes())
    return jwt.decode(assertion, cert.public_key(), algorithms=["RS256"], audience=AUDIENCE)


def test_assertion_with_certificate(pki: TestPki) -> None:
    creds = load_credentials(keystore_cfg(pki), environ={PASSWORD_ENV: pki.password})
    now = time.time()

    assertion = make_assertion(creds, client_id=CLIENT, audience=AUDIENCE, scope=SCOPE, now=now)

    header = jwt.get_unverified_header(assertion)
    assert header["alg"] == "RS256"
    assert "kid" not in header
    assert header["x5c"] == list(creds.x5c or ())
    assert base64.b64decode(header["x5c"][0]) == leaf_der(pki)
    # verifies against the certificate's own public key, so it was signed with the right key
    claims = decode_grant(assertion, pki)
    assert set(claims) == {"aud", "iss", "scope", "iat", "exp", "jti"}
    assert claims["aud"] == AUDIENCE
    assert claims["iss"] == CLIENT
    assert claims["scope"] == SCOPE
    assert claims["iat"] == int(now)
    assert claims["exp"] == int(now) + 120
    assert uuid.UUID(claims["jti"]).version == 4


def test_assertion_with_kid(pki: TestPki) -> None:
    cfg = MaskinportenConfig(client_id=CLIENT, key_file=str(pki.kid_key), kid=pki.kid)
    creds = load_credentials(cfg, environ={})

    assertion = make_assertion(creds, client_id=CLIENT, audience=AUDIENCE, scope=SCOPE)

    header = jwt.get_unverified_header(assertion)
    assert header["kid"] == pki.kid and "x5c" not in header
    public = serialization.load_pem_public_key(pki.kid_pub.read_bytes())
    jwt.decode(assertion, public, algorithms=["RS256"], audience=AUDIENCE)


def test_assertion_lifetime_and_fresh_jti(pki: TestPki) -> None:
    creds = load_credentials(pem_cfg(pki), environ={})
    jtis = set()
    for _ in range(50):
        claims = decode_grant(
            make_assertion(creds, client_id=CLIENT, audience=AUDIENCE, scope=SCOPE, lifetime=60),
            pki,
        )
        assert claims["exp"] - claims["iat"] == 60
        jtis.add(claims["jti"])
    assert len(jtis) == 50
    with pytest.raises(ValueError):
        make_assertion(creds, client_id=CLIENT, audience=AUDIENCE, scope=SCOPE, lifetime=121)


# the token provider, against the stand-in


@dataclass
class Endpoint:
    standin: MaskinportenStandIn
    url: str
    creds: Credentials

    def cfg(self, client_id: str = CLIENT) -> MaskinportenConfig:
        return MaskinportenConfig(
            token_url=f"{self.url}/token",
            audience=AUDIENCE,
            client_id=client_id,
            scope=SCOPE,
            key_file="unused",  # credentials are loaded once per module
        )

    def provider(self, client_id: str = CLIENT) -> TokenProvider:
        return TokenProvider(self.cfg(client_id), self.creds, initial_backoff=0.05, max_backoff=0.3)


def registration(pki: TestPki) -> ClientRegistration:
    return ClientRegistration(scopes=frozenset({SCOPE}), orgnr=pki.orgnr)


@pytest.fixture
async def endpoint(pki: TestPki) -> AsyncIterator[Endpoint]:
    standin = MaskinportenStandIn(
        issuer="https://test.maskinporten.no/",
        audience=AUDIENCE,
        clients={CLIENT: registration(pki)},
        trusted_ca_pems=[pki.ca_cert_pem],
        faults=MaskinportenFaults(),
    )
    creds = load_credentials(pem_cfg(pki), environ={})
    async with standin.serve() as url:
        yield Endpoint(standin, url, creds)


@pytest.fixture
async def provider(endpoint: Endpoint) -> AsyncIterator[TokenProvider]:
    p = endpoint.provider()
    yield p
    await p.close()


def jwt_logged(caplog: pytest.LogCaptureFixture) -> bool:
    """Whether any JWT (access token or grant) reached the log; every JWT starts with eyJ.

    Returns a bool so that a failing assert does not print the leaked secret itself.
    """
    return "eyJ" in caplog.text


async def test_provider_gets_a_token(
    endpoint: Endpoint, provider: TokenProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="relay.auth")
    assert provider.expires_in() is None
    await provider.start()

    token = await asyncio.wait_for(provider.token(), 5)

    claims = endpoint.standin.verify_access_token(token, scope=SCOPE)
    assert claims["client_id"] == CLIENT
    assert provider.fetches == {"ok": 1, "oauth_error": 0, "http_error": 0, "network_error": 0}
    assert provider.last_error is None
    remaining = provider.expires_in()
    assert remaining is not None and 115 < remaining <= 120
    assert f"got access token for {CLIENT}, scope {SCOPE}, expires in 120 s" in caplog.messages
    assert not jwt_logged(caplog)


@pytest.mark.e2e
async def test_steady_state_never_waits(endpoint: Endpoint, provider: TokenProvider) -> None:
    endpoint.standin.faults.token_lifetime = 3
    await provider.start()
    await asyncio.wait_for(provider.token(), 5)

    longest = 0.0
    seen = set()
    # a fixed 8 s window on purpose: it measures how long token() takes across several
    # refreshes (3 s tokens), not a condition to wait for
    end = time.monotonic() + 8
    while time.monotonic() < end:
        started = time.monotonic()
        token = await provider.token()
        longest = max(longest, time.monotonic() - started)
        endpoint.standin.verify_access_token(token, scope=SCOPE)  # raises when expired
        seen.add(token)
        await asyncio.sleep(0.05)

    assert longest < 0.05
    # one refresh per ~1.5 s: 5 or 6 in 8 s, plus the first
    assert 4 <= provider.fetches["ok"] <= 10
    assert len(seen) >= 4
    assert endpoint.standin.issued == provider.fetches["ok"]


async def test_concurrent_callers_on_a_cold_provider_share_one_fetch(
    endpoint: Endpoint, provider: TokenProvider
) -> None:
    endpoint.standin.faults.delay = 0.2  # all callers arrive while the one fetch is under way

    tokens = await asyncio.wait_for(asyncio.gather(*(provider.token() for _ in range(20))), 5)

    distinct = len(set(tokens))
    assert distinct == 1
    assert endpoint.standin.issued == 1
    assert provider.fetches["ok"] == 1


async def test_unavailable_endpoint_is_retried_until_it_recovers(
    endpoint: Endpoint, provider: TokenProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="relay.auth")
    endpoint.standin.faults.unavailable = True
    await provider.start()
    waiting = asyncio.create_task(provider.token())

    await eventually(lambda: provider.fetches["http_error"] >= 3, 5, "three failed fetches")
    assert not waiting.done()
    assert provider.last_error is not None and "HTTP 503" in provider.last_error
    endpoint.standin.faults.unavailable = False
    token = await asyncio.wait_for(waiting, 5)

    endpoint.standin.verify_access_token(token)
    failures = [r for r in caplog.records if "HTTP 503" in r.getMessage()]
    assert not jwt_logged(caplog)
    assert len(failures) == 1 and failures[0].levelno == logging.WARNING
    assert sum("recovered" in m for m in caplog.messages) == 1
    assert provider.last_error is None


async def test_oauth_error_is_logged_once_while_retries_continue(
    endpoint: Endpoint, pki: TestPki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="relay.auth")
    provider = endpoint.provider(client_id=UNREGISTERED)
    try:
        await provider.start()
        waiting = asyncio.create_task(provider.token())
        await eventually(lambda: provider.fetches["oauth_error"] >= 4, 5, "four refused grants")
        assert not waiting.done()

        description = "Invalid client: iss is not a registered client id"
        assert provider.last_error == f"invalid_client: {description}"
        errors = [
            r for r in caplog.records if r.name == "relay.auth" and r.levelno == logging.ERROR
        ]
        assert len(errors) == 1
        assert f"invalid_client: {description}" in errors[0].getMessage()
        assert UNREGISTERED in errors[0].getMessage()

        endpoint.standin.clients[UNREGISTERED] = registration(pki)
        token = await asyncio.wait_for(waiting, 5)
    finally:
        await provider.close()

    assert sum("token endpoint recovered" in m for m in caplog.messages) == 1
    token_logged = token in caplog.text
    assert not token_logged
    assert not jwt_logged(caplog)


async def test_invalidate_fetches_a_new_token(endpoint: Endpoint, provider: TokenProvider) -> None:
    await provider.start()
    first = await asyncio.wait_for(provider.token(), 5)

    provider.invalidate(first)
    second = await asyncio.wait_for(provider.token(), 5)

    renewed = second != first
    assert renewed
    assert endpoint.standin.issued == 2
    provider.invalidate(first)  # an old token: nothing to do
    await asyncio.sleep(0.1)
    assert endpoint.standin.issued == 2
    kept = await provider.token() == second
    assert kept


async def test_closed_provider_refuses(provider: TokenProvider) -> None:
    await provider.start()
    await asyncio.wait_for(provider.token(), 5)
    await provider.close()
    with pytest.raises(RuntimeError):
        await provider.token()


# relay token


async def test_fetch_and_describe(endpoint: Endpoint, pki: TestPki) -> None:
    cfg = MaskinportenConfig(
        token_url=f"{endpoint.url}/token",
        audience=AUDIENCE,
        client_id=CLIENT,
        scope=SCOPE,
        keystore=str(pki.keystore),
    )
    environ = {PASSWORD_ENV: pki.password}

    text = await fetch_and_describe(cfg, environ=environ)
    raw = await fetch_and_describe(cfg, raw=True, environ=environ)

    assert f'"client_id": "{CLIENT}"' in text
    assert '"ID": "0192:991825827"' in text
    assert "expires in 120 s" in text
    assert "O=Test Org" in text and "valid until" in text
    token_shown = "eyJ" in text  # every JWT starts with this
    password_shown = pki.password in text
    assert not token_shown and not password_shown
    token = raw.splitlines()[-1]
    endpoint.standin.verify_access_token(token, scope=SCOPE)
    assert endpoint.standin.issued == 2


async def test_fetch_and_describe_errors_are_one_line(endpoint: Endpoint, pki: TestPki) -> None:
    cfg = MaskinportenConfig(
        token_url=f"{endpoint.url}/token",
        audience=AUDIENCE,
        client_id=UNREGISTERED,
        scope=SCOPE,
        key_file=str(pki.leaf_key),
        cert_file=str(pki.leaf_cert),
    )
    with pytest.raises(UserError) as refused:
        await fetch_and_describe(cfg, environ={})
    assert "invalid_client: Invalid client" in str(refused.value)

    # a port bound here and not listening: connections to it are refused for as long as it
    # is held (a port merely found free could be taken by another process meanwhile)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]
        url = f"http://127.0.0.1:{closed_port}/token"
        unreachable = replace(cfg, token_url=url, client_id=CLIENT)
        with pytest.raises(UserError) as unreached:
            await fetch_and_describe(unreachable, environ={})
    message = str(unreached.value)
    assert message.startswith(f"cannot reach token endpoint http://127.0.0.1:{closed_port}/token: ")
    assert "\n" not in message
