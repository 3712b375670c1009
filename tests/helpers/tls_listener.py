"""A TLS listener of each kind (HTTP, syslog over TCP, JSON lines, RELP) in front of an in-process
relay's spool, and clients that send to it or must be refused by it: for the TLS tests."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import orjson
from aiohttp import web

from relay.config import (
    Config,
    HttpIngestConfig,
    IngestConfig,
    JsonLinesIngestConfig,
    RelpIngestConfig,
    SpoolConfig,
    SyslogIngestConfig,
)
from relay.server import build_app
from relay.sources import relp
from relay.sources.http_listener import LimitedTCPSite
from relay.sources.json_lines import start_json_lines
from relay.sources.syslog import start_syslog
from relay.sources.tls import ListenerTLS, listener_tls
from tests.helpers.events import make_event
from tests.helpers.inprocess import InProcessRelay
from tests.helpers.tls import TlsPki, peer_serial

__all__ = ["KINDS", "RELP_OFFERS", "Listener", "close_writer", "started", "tls_settings"]

KINDS = ("http", "syslog", "json_lines", "relp")
RELP_OFFERS = b"relp_version=0\nrelp_software=relay-tls-test,1,none\ncommands=syslog"


def tls_settings(pki: TlsPki, mutual: bool = True) -> dict[str, str]:
    return {
        "tls_cert_file": str(pki.server_cert),
        "tls_key_file": str(pki.server_key),
        "tls_client_ca_file": str(pki.ca_cert) if mutual else "",
    }


class Listener:
    """One TLS listener of `kind` on 127.0.0.1 in front of `relay`'s spool."""

    def __init__(self, relay: InProcessRelay, kind: str, tls: ListenerTLS) -> None:
        self.relay, self.kind, self.tls = relay, kind, tls
        self.port = 0
        self.site: LimitedTCPSite | None = None

    async def start(self, max_connections: int = 64) -> None:
        settings = dict(
            tls_cert_file=self.tls.files.cert,
            tls_key_file=self.tls.files.key,
            tls_client_ca_file=self.tls.files.client_ca,
            max_connections=max_connections,
        )
        if self.kind == "http":
            cfg = Config(
                ingest=IngestConfig(
                    http=HttpIngestConfig(listen="127.0.0.1:0", **settings),
                    max_event_bytes=self.relay.intake.max_event_bytes,
                ),
                spool=SpoolConfig(path=str(self.relay.spool.directory)),
            )
            app = build_app(cfg, self.relay.spool, None, intake=self.relay.intake)
            runner = web.AppRunner(app)
            await runner.setup()
            self.relay._runner = runner  # closed with the relay
            self.site = LimitedTCPSite(
                runner,
                "127.0.0.1",
                0,
                max_connections=max_connections,
                ssl_context=self.tls.context,
            )
            await self.site.start()
            self.port = self.site.port
        elif self.kind == "syslog":
            cfg_s = SyslogIngestConfig(tcp_listen="127.0.0.1:0", udp_listen="", **settings)
            self.relay.syslog = await start_syslog(cfg_s, self.relay.intake, self.tls)
            assert self.relay.syslog.tcp is not None
            self.port = self.relay.syslog.tcp.port or 0
        elif self.kind == "relp":
            cfg_r = RelpIngestConfig(listen="127.0.0.1:0", **settings)
            source = await relp.start_relp(cfg_r, self.relay.intake, self.tls)
            # InProcessRelay closes its syslog source on the way out: any source with close()
            self.relay.syslog = source  # type: ignore[assignment]
            self.port = source.port or 0
        else:
            cfg_j = JsonLinesIngestConfig(tcp_listen="127.0.0.1:0", **settings)
            self.relay.json_lines = await start_json_lines(cfg_j, self.relay.intake, self.tls)
            assert self.relay.json_lines.tcp is not None
            self.port = self.relay.json_lines.tcp.port or 0

    def payload(self, events: list[dict]) -> bytes:
        """What a producer of this kind sends for `events`."""
        if self.kind == "json_lines":
            return b"".join(orjson.dumps(e) + b"\n" for e in events)
        if self.kind == "syslog":
            # RFC 5425: octet-counted frames, as rsyslog's gtls driver sends them
            frames = []
            for e in events:
                msg = b"<134>1 2024-05-01T10:00:00Z host app - - - " + orjson.dumps(e)
                frames.append(b"%d %s" % (len(msg), msg))
            return b"".join(frames)
        if self.kind == "relp":
            # a session as librelp's client opens it, one syslog command per event, then close
            frames = [_relp_frame(1, b"open", RELP_OFFERS)]
            for txnr, e in enumerate(events, 2):
                msg = b"<134>1 2024-05-01T10:00:00Z host app - - - " + orjson.dumps(e)
                frames.append(_relp_frame(txnr, b"syslog", msg))
            frames.append(_relp_frame(len(events) + 2, b"close", b""))
            return b"".join(frames)
        body = orjson.dumps(events)
        return (
            b"POST /api/status HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )

    async def send(self, context: ssl.SSLContext | None, events: list[dict]) -> tuple[int, bytes]:
        """Connect (with TLS when `context` is given) and send `events`: (serial of the
        certificate shown, the HTTP answer or b"" for the stream sources, which answer nothing
        and are closed by us once sent). Raises what the client meets when refused."""
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=context, server_hostname="localhost" if context else None
        )
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            serial = peer_serial(ssl_object) if ssl_object is not None else 0
            writer.write(self.payload(events))
            await writer.drain()
            answer = b""
            if self.kind in ("http", "relp"):  # they answer: read until the relay closes
                answer = await asyncio.wait_for(reader.read(), 15)
            return serial, answer
        finally:
            await close_writer(writer)

    async def refused(self, context: ssl.SSLContext | None) -> None:
        """A client that must be refused: it sends an event, and the relay ends the connection
        without an answer (or the handshake fails outright)."""
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1",
                self.port,
                ssl=context,
                server_hostname="localhost" if context else None,
            )
        except (ssl.SSLError, ConnectionError):
            return
        try:
            writer.write(self.payload([make_event(refused=True)]))
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 15)
        except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            await close_writer(writer)
        assert answer == b"", f"a refused client was answered: {answer[:200]!r}"


def _relp_frame(txnr: int, command: bytes, data: bytes) -> bytes:
    if not data:
        return b"%d %s 0\n" % (txnr, command)
    return b"%d %s %d %s\n" % (txnr, command, len(data), data)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()


async def started(
    relay: InProcessRelay, kind: str, pki: TlsPki, mutual: bool = True, **kw: int
) -> Listener:
    tls = listener_tls(f"ingest.{kind}", _Settings(**tls_settings(pki, mutual)))
    assert tls is not None
    listener = Listener(relay, kind, tls)
    await listener.start(**kw)
    return listener


class _Settings:
    def __init__(self, **kw: str) -> None:
        self.__dict__.update(kw)
