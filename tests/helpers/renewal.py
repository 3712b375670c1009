"""Renewing a business certificate, as its holder would: a CA the test keeps the key of, and
leaf certificates for one organisation number it issues on demand (a new key each time).

`seed_standin_pki(data)` writes that CA (and a first leaf) where `relay dev-upstream --data DATA`
loads its PKI from, so the Maskinporten stand-in trusts every certificate issued here.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

__all__ = ["BusinessCA", "seed_standin_pki"]

ORGNR = "991825827"  # the stand-in's default organisation (relay.dev.upstream.DEFAULT_ORGNR)
_PEM = serialization.Encoding.PEM


class BusinessCA:
    def __init__(self, directory: Path, orgnr: str = ORGNR) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.orgnr = orgnr
        self._key = _rsa()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Relay Renewal Test CA")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_pem = self.cert.public_bytes(_PEM)

    def issue(self, cert_file: Path, key_file: Path) -> int:
        """A new key and certificate, moved over `cert_file` / `key_file` (key first, each file
        whole at once, as a careful renewal script does); returns the certificate's serial."""
        key = _rsa()
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Org"),
                        x509.NameAttribute(NameOID.SERIAL_NUMBER, self.orgnr),
                        x509.NameAttribute(NameOID.COMMON_NAME, "Test Org"),
                    ]
                )
            )
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        _replace(Path(key_file), _key_pem(key))
        _replace(Path(cert_file), cert.public_bytes(_PEM))
        return cert.serial_number

    def keystore(self, cert_file: Path, key_file: Path, password: str) -> bytes:
        key = serialization.load_pem_private_key(Path(key_file).read_bytes(), None)
        cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
        assert isinstance(key, rsa.RSAPrivateKey)
        encryption = serialization.BestAvailableEncryption(password.encode())
        return pkcs12.serialize_key_and_certificates(b"test-org", key, cert, None, encryption)


def seed_standin_pki(data: Path, ca: BusinessCA) -> None:
    """Files in DATA/pki that make `relay dev-upstream --data DATA` trust `ca` (it loads an
    existing PKI rather than making one)."""
    pki = Path(data) / "pki"
    pki.mkdir(parents=True, exist_ok=True)
    _replace(pki / "ca.pem", ca.ca_pem)
    ca.issue(pki / "leaf.pem", pki / "leaf.key")
    (pki / "keystore.p12").write_bytes(ca.keystore(pki / "leaf.pem", pki / "leaf.key", "changeit"))
    kid = _rsa()
    _replace(pki / "kid.key", _key_pem(kid))
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    _replace(pki / "kid.pub", kid.public_key().public_bytes(_PEM, public))


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _replace(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".new")
    partial.write_bytes(data)
    os.chmod(partial, 0o600)
    partial.replace(path)
