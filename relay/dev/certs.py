"""A throwaway PKI for tests and demos: a CA, a business-certificate-like leaf, a kid key.

Nothing here is fit for production: keys are written unencrypted next to the certificates, and
the CA is self-signed. It only mimics the shape of a Norwegian virksomhetssertifikat (the
organisation number in the subject's serialNumber) so that Maskinporten-like checks have
something real to check.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

__all__ = ["TEST_KID", "TestPki", "make_test_pki"]

TEST_KID = "relay-test-kid"


@dataclass(frozen=True)
class TestPki:
    """Paths of the files :func:`make_test_pki` wrote, and the values needed to use them."""

    # not a test class, despite the name; keeps pytest from trying to collect it
    __test__ = False

    directory: Path
    ca_cert: Path
    leaf_cert: Path
    leaf_key: Path
    keystore: Path
    kid_key: Path
    kid_pub: Path
    password: str
    orgnr: str
    kid: str
    ca_cert_pem: bytes


def make_test_pki(
    directory: Path,
    *,
    orgnr: str = "991825827",
    password: str = "changeit",
    expired: bool = False,
) -> TestPki:
    """Create a CA, a leaf certificate for `orgnr` and a spare kid key in `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    ca_key = _rsa_key()
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Relay Test CA"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Relay Test CA"),
        ]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        # reaches back far enough to have issued an already expired leaf
        .not_valid_before(now - dt.timedelta(days=800))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    if expired:
        not_before, not_after = now - dt.timedelta(days=400), now - dt.timedelta(days=1)
    else:
        # a minute of slack so a verifier whose clock is slightly behind still accepts it
        not_before, not_after = now - dt.timedelta(minutes=1), now + dt.timedelta(days=365)
    leaf_key = _rsa_key()
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Org"),
                    x509.NameAttribute(NameOID.SERIAL_NUMBER, orgnr),
                    x509.NameAttribute(NameOID.COMMON_NAME, "Test Org"),
                ]
            )
        )
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    kid_key = _rsa_key()

    pem = serialization.Encoding.PEM
    ca_pem = ca_cert.public_bytes(pem)
    paths = {
        "ca_cert": directory / "ca.pem",
        "leaf_cert": directory / "leaf.pem",
        "leaf_key": directory / "leaf.key",
        "keystore": directory / "keystore.p12",
        "kid_key": directory / "kid.key",
        "kid_pub": directory / "kid.pub",
    }
    _write(paths["ca_cert"], ca_pem)
    _write(paths["leaf_cert"], leaf_cert.public_bytes(pem))
    _write(paths["leaf_key"], _private_pem(leaf_key), private=True)
    _write(
        paths["keystore"],
        pkcs12.serialize_key_and_certificates(
            b"test-org",
            leaf_key,
            leaf_cert,
            [ca_cert],
            serialization.BestAvailableEncryption(password.encode()),
        ),
        private=True,
    )
    _write(paths["kid_key"], _private_pem(kid_key), private=True)
    _write(
        paths["kid_pub"],
        kid_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo),
    )
    return TestPki(
        directory=directory,
        password=password,
        orgnr=orgnr,
        kid=TEST_KID,
        ca_cert_pem=ca_pem,
        **paths,
    )


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _private_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    mode = 0o600 if private else 0o644
    # created with the final mode so a private key is never readable by others, not even briefly
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # an existing file keeps its old mode through os.open
