"""Throwaway PKIs for the listeners' TLS tests: made on the fly, never committed.

`make_tls_pki` writes, in one directory: a CA; a server certificate for localhost / 127.0.0.1 / ::1
signed by it; a client certificate signed by it; an expired client certificate signed by it; and
a second, unrelated CA with a client certificate of its own (the "wrong CA" case). EC P-256 keys:
quick to make, and every peer here (OpenSSL, GnuTLS in rsyslog, Node) takes them.
`renew_server_cert` writes a new server certificate (new key, new serial) over the old files,
as a renewal on disk does; the serial tells a client which one it was shown.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class TlsPki:
    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    expired_client_cert: Path
    expired_client_key: Path
    other_ca_cert: Path
    other_client_cert: Path
    other_client_key: Path

    def client_context(
        self, *, cert: Path | None = None, key: Path | None = None
    ) -> ssl.SSLContext:
        """A client context that trusts our CA and, when given, presents `cert` / `key`."""
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        if cert is not None:
            context.load_cert_chain(str(cert), str(key) if key else None)
        return context

    def good_client_context(self) -> ssl.SSLContext:
        return self.client_context(cert=self.client_cert, key=self.client_key)


def make_tls_pki(directory: Path) -> TlsPki:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("Relay Listener Test CA")
    other_key, other_cert = _ca("Some Other CA")
    _write(directory / "ca.pem", _pem(ca_cert))
    _write(directory / "ca.key", _key_pem(ca_key), private=True)
    _write(directory / "other-ca.pem", _pem(other_cert))
    now = dt.datetime.now(dt.UTC)
    good = (now - dt.timedelta(minutes=5), now + dt.timedelta(days=30))
    expired = (now - dt.timedelta(days=30), now - dt.timedelta(days=1))
    _leaf(directory, "server", ca_key, ca_cert, good, server=True)
    _leaf(directory, "client", ca_key, ca_cert, good, server=False)
    _leaf(directory, "expired-client", ca_key, ca_cert, expired, server=False)
    _leaf(directory, "other-client", other_key, other_cert, good, server=False)
    return TlsPki(
        directory=directory,
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        expired_client_cert=directory / "expired-client.pem",
        expired_client_key=directory / "expired-client.key",
        other_ca_cert=directory / "other-ca.pem",
        other_client_cert=directory / "other-client.pem",
        other_client_key=directory / "other-client.key",
    )


def renew_server_cert(pki: TlsPki) -> int:
    """Write a new server certificate and key over the old files; returns its serial number."""
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    window = (now - dt.timedelta(minutes=5), now + dt.timedelta(days=60))
    return _leaf(pki.directory, "server", ca_key, ca_cert, window, server=True)


def serial_of(pem_file: Path) -> int:
    return x509.load_pem_x509_certificate(Path(pem_file).read_bytes()).serial_number


def peer_serial(sock: ssl.SSLSocket | ssl.SSLObject) -> int:
    """The serial number of the certificate the server showed on this connection."""
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


# -- making certificates --------------------------------------------------------------------------


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=60))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    directory: Path,
    stem: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    window: tuple[dt.datetime, dt.datetime],
    *,
    server: bool,
) -> int:
    key = ec.generate_private_key(ec.SECP256R1())
    serial = x509.random_serial_number()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"relay-test-{stem}")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(window[0])
        .not_valid_after(window[1])
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    # key first, then certificate: a reader between the two writes sees the old pair or a
    # mismatch it reports, never a certificate whose key is missing for long
    _write(directory / f"{stem}.key", _key_pem(key), private=True)
    _write(directory / f"{stem}.pem", _pem(cert))
    return serial


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    # written beside and renamed over: a reader sees the old file or the new one, never half
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
