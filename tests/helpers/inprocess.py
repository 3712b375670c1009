"""A relay in the test's own event loop: a real spool file, the intake, and whichever sources a
test starts (HTTP, syslog, JSON lines) on 127.0.0.1, with a port the OS chooses.

    async with inprocess_relay(tmp_path) as relay:
        await relay.start_http()
        status, body, headers = await relay.post(data, **{"Content-Type": "application/json"})
        events = await relay.collect(3)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDictProxy

from relay.config import (
    Config,
    HttpIngestConfig,
    IngestConfig,
    JsonLinesIngestConfig,
    SpoolConfig,
    SyslogIngestConfig,
)
from relay.server import build_app
from relay.sources.http import read_auth_token
from relay.sources.http_listener import LimitedTCPSite
from relay.sources.intake import Intake
from relay.sources.json_lines import JsonLinesSource, start_json_lines
from relay.sources.syslog import SyslogSource, start_syslog
from relay.spool import SqliteSpool
from tests.helpers.waiting import eventually

__all__ = ["LOCAL", "MAX_EVENT", "InProcessRelay", "inprocess_relay"]

MAX_EVENT = 4096  # small, so that tests reach the limit with small events
LOCAL = "127.0.0.1:0"


class InProcessRelay:
    """What a source test talks to and looks into. Start sources with `start_*`; `close` stops
    them and then the spool."""

    def __init__(self, spool: SqliteSpool, intake: Intake) -> None:
        self.spool, self.intake = spool, intake
        self.seen: list[dict] = []  # every event `collect` leased so far
        self.syslog: SyslogSource | None = None
        self.json_lines: JsonLinesSource | None = None
        self.url = ""  # of the HTTP source, once started
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    async def open(
        cls,
        tmp_path: Path,
        *,
        max_bytes: int = 1 << 30,
        max_event_bytes: int = MAX_EVENT,
        dedup_window: float = 3600,
        **spool_kw: Any,
    ) -> InProcessRelay:
        """A spool in tmp_path/spool and an intake in front of it; no source yet."""
        spool = await SqliteSpool.open(
            tmp_path / "spool", max_bytes=max_bytes, dedup_window=dedup_window, **spool_kw
        )
        return cls(spool, Intake(spool, max_event_bytes))

    # -- sources ---------------------------------------------------------------------------------

    async def start_http(
        self, *, auth_token_file: str = "", max_items: int = 10_000, **http: Any
    ) -> str:
        """The HTTP application (`relay.server.build_app`) on a free port; returns its URL.
        `http`: settings of [ingest.http] that differ from a test's defaults."""
        settings = dict(listen=LOCAL, max_body_bytes=1 << 20, auth_token_file=auth_token_file)
        settings.update(http)
        cfg = Config(
            ingest=IngestConfig(
                http=HttpIngestConfig(**settings),
                max_items_per_request=max_items,
                max_event_bytes=self.intake.max_event_bytes,
            ),
            spool=SpoolConfig(path=str(self.spool.directory)),
        )
        app = build_app(cfg, self.spool, read_auth_token(auth_token_file), intake=self.intake)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        max_connections = cfg.ingest.http.max_connections
        site = LimitedTCPSite(self._runner, "127.0.0.1", 0, max_connections=max_connections)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def start_syslog(self, tcp: str = LOCAL, udp: str = LOCAL, **cfg: Any) -> SyslogSource:
        """Syslog over TCP and UDP (an empty address is off); `cfg`: more of [ingest.syslog]."""
        settings = SyslogIngestConfig(tcp_listen=tcp, udp_listen=udp, **cfg)
        self.syslog = await start_syslog(settings, self.intake)
        return self.syslog

    async def start_json_lines(self, listen: str = LOCAL, **cfg: Any) -> JsonLinesSource:
        """JSON lines over TCP; `cfg`: more of [ingest.json_lines]."""
        settings = JsonLinesIngestConfig(tcp_listen=listen, **cfg)
        self.json_lines = await start_json_lines(settings, self.intake)
        return self.json_lines

    # -- talking to it ---------------------------------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def post(
        self, data: bytes | str, path: str = "/api/status", **headers: str
    ) -> tuple[int, bytes, CIMultiDictProxy[str]]:
        """POST to the HTTP source: (status, body, headers)."""
        async with self.session.post(self.url + path, data=data, headers=headers) as r:
            return r.status, await r.read(), r.headers

    # -- looking in ------------------------------------------------------------------------------

    async def collect(
        self,
        count: int,
        timeout: float = 10.0,
        ack: bool = False,
        where: Callable[[dict], bool] = lambda event: True,
    ) -> list[dict]:
        """Lease until `count` events (that match `where`) have been seen; ack every leased
        event when asked, which frees space in the spool."""

        async def enough() -> bool:
            leased = await self.spool.lease(1000)
            self.seen += [e for item in leased if where(e := orjson.loads(item.body))]
            if ack and leased:
                await self.spool.ack([item.id for item in leased])
            return len(self.seen) >= count

        try:
            await eventually(enough, timeout, f"{count} events in the spool")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: only {len(self.seen)} arrived") from None
        return self.seen

    def rejected(self, source: str, reason: str) -> int:
        """relay_rejected_events_total{source, reason}: counted by the intake."""
        return self.intake.counters.rejected[source, reason]

    def skipped(self, source: str, reason: str) -> int:
        """relay_skipped_lines_total{source, reason}."""
        return self.intake.counters.skipped[source, reason]

    async def close_sources(self) -> None:
        """Stop the sources; returns once what they read is stored."""
        if self._session is not None:
            await self._session.close()
        closing = [s.close() for s in (self.syslog, self.json_lines) if s is not None]
        if self._runner is not None:
            closing.append(self._runner.cleanup())
        self.syslog = self.json_lines = self._runner = self._session = None
        await asyncio.gather(*closing)

    async def close(self) -> None:
        """Stop the sources, then close the spool (its stats stay readable)."""
        await self.close_sources()
        await self.spool.close()


@asynccontextmanager
async def inprocess_relay(tmp_path: Path, **spool: Any) -> AsyncIterator[InProcessRelay]:
    """`InProcessRelay.open(tmp_path, **spool)`, closed on the way out."""
    relay = await InProcessRelay.open(tmp_path, **spool)
    try:
        yield relay
    finally:
        await relay.close()
