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
import os
import re
import ssl
import time
import weakref
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from relay.config.model import Config
from relay.errors import UserError

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "ListenerContext",
    "ListenerTLS",
    "certificates_expire",
    "failure_reason",
    "handshake_failures",
    "listener_tls",
    "listeners_tls",
]

log = logging.getLogger("relay.sources.tls")

# how long a client may take over its TLS handshake before the connection is dropped: a slow or
# silent client must not hold a connection slot for asyncio's default of a minute
HANDSHAKE_TIMEOUT = 10.0

# a certificate that expires sooner than this is warned about when it is loaded (ACME clients
# renew at 30 days left: 14 means a renewal that should have happened did not)
EXPIRY_WARNING = 14 * 86400.0
_warned: set[tuple[str, int]] = set()  # (section, serial): each certificate warned about once

# every live listener's TLS, for the metrics: each one owns its own count of failed handshakes
_live: weakref.WeakSet[ListenerTLS] = weakref.WeakSet()


class ListenerContext(ssl.SSLContext):
    """A server context that knows its listener: a failed handshake is counted against it."""

    section = ""  # "ingest.http"
    handshake_failures = 0


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
        self.context = ListenerContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        # TLS 1.2 lets a client ask for a new handshake at any time, for free on its side and
        # for a costly one on ours, as often as it likes: none of our producers needs it
        self.context.options |= ssl.OP_NO_RENEGOTIATION
        self.context.section = section
        pem = _read(section, files)
        _load_into(self.context, section, files, pem)
        self.not_after = _check_expiry(section, files.cert, pem.cert)
        self._ca_digest = (
            hashlib.sha256(pem.client_ca.encode()).digest() if files.client_ca else b""
        )
        _live.add(self)

    @property
    def handshake_failures(self) -> int:
        """Handshakes that failed on this listener since it started (a client the CA did not
        sign, plain text on the TLS port, a client that stayed silent past HANDSHAKE_TIMEOUT)."""
        return self.context.handshake_failures

    @property
    def mutual(self) -> bool:
        return bool(self.files.client_ca)

    def describe(self) -> str:
        """ "tls" or "mutual tls", for the ready line."""
        return "mutual tls" if self.mutual else "tls"

    def valid_until(self) -> str:
        """The certificate and when it expires, for check-config."""
        if self.not_after is None:
            return self.files.cert
        until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.not_after))
        return f"{self.files.cert} valid until {until}"

    def reload(self, cert: str, key: str, client_ca: str) -> None:
        """Load the (renewed) files into the running context; raises UserError and keeps the
        old certificate when the new files do not load. Turning TLS or mutual TLS on or off
        needs a restart: the caller checks that."""
        files = _Files(cert, key, client_ca)
        # Each file is read once, and a trial context loads those bytes first: OpenSSL swaps a
        # context's certificate before it checks the key, so a pair that fails to load into the
        # live context leaves it serving no certificate at all. The live context then loads the
        # very bytes that worked, so a renewal written between the two loads cannot break it.
        pem = _read(self.section, files)
        _load_into(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), self.section, files, pem)
        _load_into(self.context, self.section, files, pem)
        self.not_after = _check_expiry(self.section, cert, pem.cert)
        digest = hashlib.sha256(pem.client_ca.encode()).digest() if client_ca else b""
        if client_ca and digest != self._ca_digest:
            log.warning(
                "%s.tls_client_ca_file changed: the new CA is trusted now; a CA removed from the "
                "file stays trusted until the relay restarts",
                self.section,
            )
        self._ca_digest = digest
        self.files = files


@dataclass(frozen=True)
class _Pem:
    cert: bytes
    key: bytes
    client_ca: str


def _read(section: str, files: _Files) -> _Pem:
    def read(path: str, setting: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise UserError(
                f"{section}.{setting}: cannot read {path}: {exc.strerror or exc}; check the path "
                "and that the relay's user may read it"
            ) from None

    ca = b""
    if files.client_ca:
        ca = read(files.client_ca, "tls_client_ca_file")
    return _Pem(
        read(files.cert, "tls_cert_file"),
        read(files.key, "tls_key_file"),
        ca.decode("latin-1"),  # PEM is ASCII; anything else fails to load below
    )


def _load_into(context: ssl.SSLContext, section: str, files: _Files, pem: _Pem) -> None:
    try:
        with _in_memory(pem.cert) as cert, _in_memory(pem.key) as key:
            context.load_cert_chain(cert or files.cert, key or files.key)
    except (OSError, ssl.SSLError) as exc:
        raise UserError(
            f"{section}.tls_cert_file and tls_key_file: cannot load the certificate "
            f"{files.cert} with the key {files.key}: {failure_reason(exc)}; both must be PEM and "
            "the key must belong to the certificate"
        ) from None
    if not files.client_ca:
        return
    try:
        context.load_verify_locations(cadata=pem.client_ca)
    except (OSError, ssl.SSLError, ValueError, TypeError) as exc:
        raise UserError(
            f"{section}.tls_client_ca_file: cannot load {files.client_ca}: {failure_reason(exc)}; "
            "it must hold PEM CA certificates"
        ) from None
    context.verify_mode = ssl.CERT_REQUIRED


@contextmanager
def _in_memory(data: bytes) -> Iterator[str]:
    """A path that reads as `data` (OpenSSL loads certificates only from files), or "" where
    the system has no memfd: then the caller loads the file itself. The private key never
    touches a disk this way."""
    try:
        fd = os.memfd_create("relay-tls", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        yield ""
        return
    try:
        with os.fdopen(os.dup(fd), "wb") as f:
            f.write(data)
        path = f"/proc/self/fd/{fd}"
        yield path if os.path.exists(path) else ""
    finally:
        os.close(fd)


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return _SOURCE_LINE.sub("", exc.strerror)
    if isinstance(exc, TypeError):  # cadata that is not ASCII
        return "not PEM text"
    return _SOURCE_LINE.sub("", str(exc)) or type(exc).__name__


_SOURCE_LINE = re.compile(r" \(_ssl\.c:\d+\)")  # where in CPython's C it failed: noise to a user


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


def certificates_expire() -> dict[str, float]:
    """When each live listener's certificate expires (Unix time), by section; the sooner one
    while a reload's trial copy is alive beside the running one."""
    expiry: dict[str, float] = {}
    for tls in list(_live):
        if tls.not_after is not None:
            expiry[tls.section] = min(tls.not_after, expiry.get(tls.section, tls.not_after))
    return expiry


def _check_expiry(section: str, path: str, cert_pem: bytes) -> float | None:
    """When the leaf certificate expires (Unix time); a warning when it has expired or will
    within EXPIRY_WARNING, once per certificate: an expired certificate still loads, and
    every client then refuses the listener."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:  # OpenSSL took it, so this is unlikely: the metric is left out then
        return None
    not_after = cert.not_valid_after_utc
    left = not_after.timestamp() - time.time()
    if left < EXPIRY_WARNING and (section, cert.serial_number) not in _warned:
        _warned.add((section, cert.serial_number))
        when = not_after.strftime("%Y-%m-%d %H:%M UTC")
        if left <= 0:
            log.warning(
                "%s.tls_cert_file: %s expired on %s: clients refuse the listener; renew it "
                "(a reload takes the renewed file)",
                section,
                path,
                when,
            )
        else:
            log.warning(
                "%s.tls_cert_file: %s expires in %d day(s), on %s; renew it (a reload takes the "
                "renewed file)",
                section,
                path,
                left // 86400,
                when,
            )
    return not_after.timestamp()


def handshake_failures() -> Counter[str]:
    """Failed handshakes by listener section, summed over the listeners alive now."""
    counts: Counter[str] = Counter()
    for tls in list(_live):
        counts[tls.section] += tls.handshake_failures
    return counts


def listeners_tls(cfg: Config) -> dict[str, ListenerTLS | None]:
    """Each listener's TLS (None where it is off), by its section; raises UserError for the
    first one whose files do not load."""
    ingest = cfg.ingest
    return {
        section: listener_tls(section, getattr(ingest, section.removeprefix("ingest.")))
        for section in ("ingest.http", "ingest.syslog", "ingest.json_lines", "ingest.relp")
    }
