"""TLS for the listeners: one server context per listener, built from its three settings.

``tls_cert_file`` + ``tls_key_file`` turn TLS on; ``tls_client_ca_file`` also requires every client
to present a certificate that CA signed (mutual TLS). A listener keeps the *same* `ssl.SSLContext`
object for its whole life, because asyncio binds a server to the context it was started with:
`ListenerTLS.reload` loads the renewed certificate chain into that context, and every handshake
after it uses the new certificate while the connections already open keep theirs. OpenSSL only
adds to a context's trust store, so a *removed* client CA stays trusted until a restart; reload
says so when the CA file changed.

Everything a user can get wrong (a missing file, a key that does not match the certificate, a CA
file without certificates) is a one-line `UserError` naming the setting; it never holds a
secret, since only paths and OpenSSL's reason are shown.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from relay.errors import UserError

__all__ = ["ListenerTLS", "listener_tls"]

log = logging.getLogger("relay.sources.tls")

# how long a client may take over its TLS handshake before the connection is dropped: a slow or
# silent client must not hold a connection slot for asyncio's default of a minute
HANDSHAKE_TIMEOUT = 10.0


@dataclass(frozen=True)
class _Files:
    cert: str
    key: str
    client_ca: str


class ListenerTLS:
    """The TLS side of one listener; `context` is what `create_server(ssl=...)` takes."""

    def __init__(self, section: str, files: _Files) -> None:
        self.section = section  # "ingest.http": the settings' prefix, for messages
        self.files = files
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load(files)
        self._ca_digest = _digest(files.client_ca)

    @property
    def mutual(self) -> bool:
        return bool(self.files.client_ca)

    def describe(self) -> str:
        """ "tls" or "mutual tls", for the ready line."""
        return "mutual tls" if self.mutual else "tls"

    def reload(self, cert: str, key: str, client_ca: str) -> None:
        """Load the (renewed) files into the running context; raises UserError and keeps the
        old certificate when the new files do not load. Turning TLS or mutual TLS on or off
        needs a restart: the caller checks that."""
        files = _Files(cert, key, client_ca)
        # a trial context first: a broken renewal must not leave the live one half-loaded
        trial = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        _load_into(trial, self.section, files)
        self._load(files)
        digest = _digest(client_ca)
        if client_ca and digest != self._ca_digest:
            log.warning(
                "%s.tls_client_ca_file changed: the new CA is trusted now; a CA removed from the "
                "file stays trusted until the relay restarts",
                self.section,
            )
        self._ca_digest = digest
        self.files = files

    def _load(self, files: _Files) -> None:
        _load_into(self.context, self.section, files)


def _load_into(context: ssl.SSLContext, section: str, files: _Files) -> None:
    try:
        context.load_cert_chain(files.cert, files.key)
    except FileNotFoundError as exc:
        raise UserError(
            f"{section}: cannot read {exc.filename or files.cert}: no such file; check "
            f"{section}.tls_cert_file and {section}.tls_key_file"
        ) from None
    except (OSError, ssl.SSLError) as exc:
        raise UserError(
            f"{section}: cannot load the TLS certificate {files.cert} with key {files.key}: "
            f"{_reason(exc)}; both must be PEM and the key must belong to the certificate"
        ) from None
    if not files.client_ca:
        return
    try:
        context.load_verify_locations(cafile=files.client_ca)
    except FileNotFoundError:
        raise UserError(
            f"{section}.tls_client_ca_file: cannot read {files.client_ca}: no such file"
        ) from None
    except (OSError, ssl.SSLError) as exc:
        raise UserError(
            f"{section}.tls_client_ca_file: cannot load {files.client_ca}: {_reason(exc)}; "
            "it must hold PEM CA certificates"
        ) from None
    context.verify_mode = ssl.CERT_REQUIRED


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _digest(path: str) -> bytes:
    if not path:
        return b""
    try:
        return hashlib.sha256(Path(path).read_bytes()).digest()
    except OSError:
        return b""


def listener_tls(section: str, cfg: object) -> ListenerTLS | None:
    """The TLS of the listener whose settings are `cfg` (any section with the three tls_*
    fields), or None when TLS is off. Raises UserError for a half or broken setup."""
    cert = getattr(cfg, "tls_cert_file", "")
    key = getattr(cfg, "tls_key_file", "")
    client_ca = getattr(cfg, "tls_client_ca_file", "")
    if not cert and not key:
        if client_ca:
            raise UserError(
                f"{section}.tls_client_ca_file is set without {section}.tls_cert_file and "
                "tls_key_file; client certificates need TLS: set both"
            )
        return None
    if not cert or not key:
        missing = "tls_key_file" if cert else "tls_cert_file"
        raise UserError(f"{section}.{missing} is empty; TLS needs both a certificate and its key")
    return ListenerTLS(section, _Files(cert, key, client_ca))
