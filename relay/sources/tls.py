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

import asyncio
import hashlib
import logging
import os
import re
import ssl
import weakref
from asyncio import sslproto
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from relay.config.model import Config
from relay.errors import UserError

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "ListenerContext",
    "ListenerTLS",
    "TlsHandshakes",
    "handshake_failed",
    "handshake_failures",
    "listener_tls",
    "listeners_tls",
]

log = logging.getLogger("relay.sources.tls")

# how long a client may take over its TLS handshake before the connection is dropped: a slow or
# silent client must not hold a connection slot for asyncio's default of a minute
HANDSHAKE_TIMEOUT = 10.0

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
        self.context.section = section
        pem = _read(section, files)
        _load_into(self.context, section, files, pem)
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
            f"{files.cert} with the key {files.key}: {_reason(exc)}; both must be PEM and the key "
            "must belong to the certificate"
        ) from None
    if not files.client_ca:
        return
    try:
        context.load_verify_locations(cadata=pem.client_ca)
    except (OSError, ssl.SSLError, ValueError, TypeError) as exc:
        raise UserError(
            f"{section}.tls_client_ca_file: cannot load {files.client_ca}: {_reason(exc)}; "
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


def _reason(exc: BaseException) -> str:
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


def handshake_failed(context: ssl.SSLContext | None, peer: object, exc: BaseException) -> None:
    """Count and log (at debug: a scanner must not flood the log; the counter shows a trend) a
    TLS handshake that failed on the listener of `context`."""
    section = "a TLS listener"
    if isinstance(context, ListenerContext):
        context.handshake_failures += 1
        section = context.section
    peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "?")
    log.debug("%s: TLS handshake with %s failed: %s", section, peer_text, _reason(exc))


def handshake_failures() -> Counter[str]:
    """Failed handshakes by listener section, summed over the listeners alive now."""
    counts: Counter[str] = Counter()
    for tls in list(_live):
        counts[tls.section] += tls.handshake_failures
    return counts


class TlsHandshakes:
    """TLS in front of a protocol factory for `loop.create_server` (without its `ssl=`).

    asyncio's own `ssl=` hands a connection to the protocol only once its handshake is done, and
    a failed handshake vanishes without a trace. Here each handshake is counted while it runs:
    at most `limit` at a time (a flood of silent clients holds at most that many sockets, each
    for at most HANDSHAKE_TIMEOUT; over it, a new connection is closed at once), and a failure
    is counted and logged by `handshake_failed`. The protocol made by the wrapped factory sees
    `connection_made` after a good handshake, exactly as with `ssl=`.
    """

    def __init__(self, context: ssl.SSLContext | None, limit: int) -> None:
        self.context = context  # None: plain TCP, `wrap` leaves the factory as it is
        self.limit = limit
        self.refused = 0  # connections closed at once because `limit` handshakes were running
        self._running: set[_Handshake] = set()

    @property
    def running(self) -> int:
        """Handshakes in progress now."""
        return len(self._running)

    def wrap(
        self, factory: Callable[[], asyncio.BaseProtocol]
    ) -> Callable[[], asyncio.BaseProtocol]:
        if self.context is None:
            return factory
        return lambda: self._protocol(factory)

    def close(self) -> None:
        """Abort the handshakes still running: the listener is closing."""
        for handshake in list(self._running):
            handshake.abort()

    def _protocol(self, factory: Callable[[], asyncio.BaseProtocol]) -> asyncio.BaseProtocol:
        assert self.context is not None
        if len(self._running) >= self.limit:
            self.refused += 1
            return _Refused(self.context)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        handshake = _Handshake(
            loop,
            factory(),
            self.context,
            waiter,
            server_side=True,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
        )
        self._running.add(handshake)
        waiter.add_done_callback(lambda done: self._done(handshake, done))
        return handshake  # type: ignore[return-value]  # a BufferedProtocol, as asyncio takes

    def _done(self, handshake: _Handshake, done: asyncio.Future[None]) -> None:
        self._running.discard(handshake)
        # no exception: the handshake succeeded, or the peer went away before it said anything
        # (a port check), which is not a TLS failure
        exc = None if done.cancelled() else done.exception()
        if exc is not None:
            handshake_failed(self.context, handshake.peer, exc)


class _Handshake(sslproto.SSLProtocol):
    """asyncio's own TLS protocol (what `create_server(ssl=...)` uses), remembering its socket
    transport so that a closing listener can abort a handshake still running."""

    raw: asyncio.BaseTransport | None = None
    peer: object = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = transport
        self.peer = transport.get_extra_info("peername")
        super().connection_made(transport)

    def abort(self) -> None:
        if isinstance(self.raw, asyncio.Transport):
            self.raw.abort()


class _Refused(asyncio.Protocol):
    """A connection over the limit of handshakes at a time: closed at once, counted as failed."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.abort()
        busy = ConnectionRefusedError("too many TLS handshakes at once (max_connections)")
        handshake_failed(self._context, transport.get_extra_info("peername"), busy)


def listeners_tls(cfg: Config) -> dict[str, ListenerTLS | None]:
    """Each listener's TLS (None where it is off), by its section; raises UserError for the
    first one whose files do not load."""
    ingest = cfg.ingest
    return {
        section: listener_tls(section, getattr(ingest, section.removeprefix("ingest.")))
        for section in ("ingest.http", "ingest.syslog", "ingest.json_lines", "ingest.relp")
    }
