"""Loading the key (and certificate) that sign Maskinporten grants, with one-line errors.

Everything an operator can get wrong here (a path, a password, an expired certificate, a key
that belongs to another certificate) is reported as a :class:`UserError` naming the setting,
so that the relay refuses to start instead of failing on every token request later. Messages
name files and settings, never passwords or key material.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from relay.config.model import MaskinportenConfig
from relay.errors import UserError

__all__ = ["Credentials", "load_credentials"]

# Business certificates carry the organisation number in these; without the names they print
# as bare OIDs ("2.5.4.5=991825827"), which operators cannot read
_NAMES = {
    NameOID.SERIAL_NUMBER: "serialNumber",
    x509.ObjectIdentifier("2.5.4.97"): "organizationIdentifier",
}


@dataclass(frozen=True)
class Credentials:
    """What signs a grant: an RSA key plus either the certificate chain (x5c) or a key id."""

    private_key: rsa.RSAPrivateKey = field(repr=False)
    x5c: tuple[str, ...] | None  # base64 DER, leaf first
    kid: str | None
    subject: str  # for people: the certificate subject, or "key id <kid>"
    not_after: dt.datetime | None  # expiry of the certificate sent as x5c


def load_credentials(
    cfg: MaskinportenConfig,
    environ: Mapping[str, str] | None = None,
    now: dt.datetime | None = None,
) -> Credentials:
    """Read the configured keystore or key file; raise UserError on anything unusable."""
    environ = os.environ if environ is None else environ
    now = dt.datetime.now(dt.UTC) if now is None else now
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    if not cfg.client_id.strip():
        raise UserError(
            "maskinporten.client_id is empty; set it to the client id registered in "
            "Maskinporten (for eFormidling: MOVE_IP_<orgnr>)"
        )
    if cfg.keystore and cfg.key_file:
        raise UserError(
            "maskinporten.keystore and maskinporten.key_file are both set; use one of them"
        )
    if cfg.cert_file and cfg.kid:
        raise UserError(
            "maskinporten.cert_file and maskinporten.kid are both set; use cert_file to send "
            "the certificate, or kid for a key registered with the client, not both"
        )

    if cfg.keystore:
        key, chain, setting, path = _from_keystore(cfg, environ)
    elif cfg.key_file and (cfg.cert_file or cfg.kid):
        key = _load_key(cfg.key_file)
        chain = _load_chain(cfg.cert_file) if cfg.cert_file else []
        setting, path = "maskinporten.cert_file", cfg.cert_file
    elif cfg.key_file:
        raise UserError(
            f"maskinporten.key_file {cfg.key_file} needs maskinporten.cert_file (the "
            "business certificate) or maskinporten.kid (a key id registered with the client)"
        )
    else:
        raise UserError("maskinporten: set keystore, or key_file with cert_file or kid")

    key_setting = "maskinporten.keystore" if cfg.keystore else "maskinporten.key_file"
    key_path = cfg.keystore or cfg.key_file
    if not isinstance(key, rsa.RSAPrivateKey):
        kind = type(key).__name__.removesuffix("PrivateKey").removeprefix("_") or "unknown"
        raise UserError(
            f"{key_setting} {key_path}: the private key is {kind}, not RSA; Maskinporten "
            "grants are signed with RS256 and need an RSA key"
        )

    if cfg.kid:
        # the certificate (if any, from a keystore) is not sent, so its dates do not matter
        return Credentials(key, None, cfg.kid, f"key id {cfg.kid}", None)

    if not chain:
        raise UserError(
            f"{setting} {path} holds no certificate; add the business certificate or set "
            "maskinporten.kid"
        )
    leaf = chain[0]
    if leaf.public_key() != key.public_key():
        raise UserError(
            f"{key_setting} {key_path}: the private key does not match the certificate "
            f"{_subject(leaf)} in {setting} {path}; use the key the "
            "certificate was issued for"
        )
    subject = _subject(leaf)
    if now >= leaf.not_valid_after_utc:
        raise UserError(
            f"{setting} {path}: the certificate {subject} expired "
            f"{_when(leaf.not_valid_after_utc)}; renew the business certificate"
        )
    if now < leaf.not_valid_before_utc:
        raise UserError(
            f"{setting} {path}: the certificate {subject} is not valid until "
            f"{_when(leaf.not_valid_before_utc)}; check this machine's clock"
        )
    x5c = tuple(
        base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in chain
    )
    return Credentials(key, x5c, None, subject, leaf.not_valid_after_utc)


def _from_keystore(
    cfg: MaskinportenConfig, environ: Mapping[str, str]
) -> tuple[object, list[x509.Certificate], str, str]:
    setting, path = "maskinporten.keystore", cfg.keystore
    data = _read(setting, path)
    if cfg.keystore_password_file:
        source = f"maskinporten.keystore_password_file {cfg.keystore_password_file}"
        password: bytes | None = _read(
            "maskinporten.keystore_password_file", cfg.keystore_password_file
        ).strip()
    elif cfg.keystore_password_env:
        source = cfg.keystore_password_env
        if cfg.keystore_password_env not in environ:
            raise UserError(
                f"{setting} {path}: no password; set the environment variable "
                f"{cfg.keystore_password_env} or maskinporten.keystore_password_file"
            )
        password = environ[cfg.keystore_password_env].encode()
    else:
        source, password = "no password configured", None
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, password)
    except ValueError as e:
        # cryptography says "Invalid password or PKCS12 data" for a wrong password and
        # "Could not deserialize" for bytes that are no PKCS#12 at all
        if "password" in str(e).lower():
            raise UserError(f"{setting} {path}: wrong password (from {source})") from None
        raise UserError(
            f"{setting} {path}: not a PKCS#12 keystore (.p12/.pfx); for PEM files use "
            "maskinporten.key_file and maskinporten.cert_file"
        ) from None
    if key is None:
        raise UserError(f"{setting} {path} holds no private key; export it with its key")
    chain = ([cert] if cert is not None else []) + list(extra)
    return key, chain, setting, path


def _load_key(path: str) -> object:
    setting = "maskinporten.key_file"
    data = _read(setting, path)
    try:
        if b"-----BEGIN" in data:
            return serialization.load_pem_private_key(data, password=None)
        return serialization.load_der_private_key(data, password=None)
    except TypeError:
        # raised when the key is encrypted and we gave no password
        raise UserError(
            f"{setting} {path}: the private key is encrypted; give an unencrypted PKCS#8 PEM "
            "key, or use maskinporten.keystore with a password"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise UserError(
            f"{setting} {path}: not a PEM private key (expected -----BEGIN PRIVATE KEY-----)"
        ) from None


def _load_chain(path: str) -> list[x509.Certificate]:
    setting = "maskinporten.cert_file"
    data = _read(setting, path)
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise UserError(
            f"{setting} {path}: not a PEM certificate (expected -----BEGIN CERTIFICATE-----)"
        ) from None


def _read(setting: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise UserError(f"{setting} {path}: cannot read: {reason}") from None


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string(_NAMES)


def _when(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
