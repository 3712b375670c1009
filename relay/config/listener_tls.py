"""The rules of the listeners' ``tls_*`` settings: certificate and key come together, and a
client CA needs them. Whether the files load is checked when the relay starts (relay.sources.tls).
"""

from __future__ import annotations

from collections.abc import Callable

from relay.config.errors import _error
from relay.config.model import Config

__all__ = ["validate_listener_tls"]


def validate_listener_tls(cfg: Config, name: Callable[[str], str]) -> None:
    """Raise a one-line ConfigError for the first half-configured listener."""
    ingest = cfg.ingest
    for section, listener in (
        ("ingest.http", ingest.http),
        ("ingest.syslog", ingest.syslog),
        ("ingest.json_lines", ingest.json_lines),
        ("ingest.relp", ingest.relp),
    ):
        cert, key = listener.tls_cert_file, listener.tls_key_file
        if bool(cert) != bool(key):
            missing, given = (
                ("tls_key_file", "tls_cert_file") if cert else ("tls_cert_file", "tls_key_file")
            )
            raise _error(
                f"{name(f'{section}.{given}')} is set but {section}.{missing} is empty; TLS "
                "needs both a certificate chain and its private key (PEM)"
            )
        if listener.tls_client_ca_file and not cert:
            raise _error(
                f"{name(f'{section}.tls_client_ca_file')} is set without "
                f"{section}.tls_cert_file and tls_key_file; client certificates need TLS"
            )
