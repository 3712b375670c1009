"""Producers for a chaos campaign, and the ledger of what they sent and what was acknowledged.

HTTP producers behave like real ones: a batch is retried until the relay answers 200, and only
then are its events acknowledged. Syslog TCP has no acknowledgement: its events are only "sent",
each remembered with the connection it was written on and when, so that a loss can be matched
against the relay kills that cut that connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import orjson

MARKER = "chaos-reject"  # the `description` of the deliberately rejected kind
STATUSES = ("OPPRETTET", "SENDT", "MOTTATT", "LEVERT", "LEST")
BATCH_SIZES = (1, 1, 1, 5, 20, 50)
GIVE_UP_AFTER_STOP = 30.0  # a batch still unacknowledged this long after the stop is abandoned

_TEMPLATE = {
    "receiver_org_number": "991825827",
    "@timestamp": "2022-08-10T00:11:27.246Z",
    "service_identifier": "DPE",
    "sender": "0192:971203420",
    "orgnr": "971203420",
    "receiver": "0192:991825827",
    "process_identifier": "urn:no:difi:profile:einnsyn:journalpost:ver1.0",
    "sender_org_number": "971203420",
    "document_identifier": "urn:no:difi:einnsyn:xsd::publisering",
}


@dataclass
class SyslogConnection:
    opened: float  # wall-clock times
    closed: float | None = None


@dataclass
class RelpLedger:
    """What the RELP producers (benchmarks.chaos_relp) sent and had acknowledged."""

    acked: set[str] = field(default_factory=set)  # rsp 200 for these
    sent: set[str] = field(default_factory=set)
    connections: int = 0
    resent: int = 0  # frames sent again after a broken connection
    refused: int = 0  # answers other than 200 (must be 0)
    abandoned: int = 0  # unanswered GIVE_UP_AFTER_STOP s after the stop


@dataclass
class Ledger:
    acked: set[str] = field(default_factory=set)  # HTTP 200 for these
    made: set[str] = field(default_factory=set)  # every event any producer made
    marked: set[str] = field(default_factory=set)  # the rejected kind, whatever the source
    http_requests: Counter[str] = field(default_factory=Counter)  # "200", "503", "error", …
    anomalies: list[str] = field(default_factory=list)
    abandoned: int = 0  # events of batches given up after the stop (never acknowledged)
    syslog_sent: dict[str, tuple[int, float]] = field(default_factory=dict)  # id: (conn, when)
    syslog_connections: list[SyslogConnection] = field(default_factory=list)
    relp: RelpLedger = field(default_factory=RelpLedger)


class EventMaker:
    def __init__(
        self, rng: random.Random, ledger: Ledger, marked_share: float, padding: int = 0
    ) -> None:
        self.rng = rng
        self.ledger = ledger
        self.marked_share = marked_share
        self.padding = padding  # bytes of `description` in events not of the rejected kind

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def make(self) -> dict:
        event = dict(_TEMPLATE, message_id=self._uuid(), conversation_id=self._uuid())
        event["status"] = self.rng.choice(STATUSES)
        self.ledger.made.add(event["message_id"])
        if self.rng.random() < self.marked_share:
            event["description"] = MARKER
            self.ledger.marked.add(event["message_id"])
        elif self.padding:
            event["description"] = "p" * self.padding
        return event


async def http_producer(
    url: str,
    ledger: Ledger,
    maker: EventMaker,
    stop: asyncio.Event,
    rate: float,
    sizes: tuple[int, ...] = BATCH_SIZES,
    limit: float = float("inf"),
) -> None:
    """Send batches at about `rate` events/s, `limit` events at most; each batch is retried
    until acknowledged."""
    rng = maker.rng
    made = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while not stop.is_set() and made < limit:
            started = time.monotonic()
            batch = [maker.make() for _ in range(rng.choice(sizes))]
            made += len(batch)
            if len(batch) == 1 and rng.random() < 0.5:
                body, ctype = orjson.dumps(batch[0]), "application/json"
            else:
                body = b"\n".join(orjson.dumps(e) for e in batch)
                ctype = "application/x-ndjson"
            await _until_acknowledged(session, url, body, ctype, batch, ledger, stop)
            pause = len(batch) / rate - (time.monotonic() - started)
            if pause > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)


async def _until_acknowledged(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    ctype: str,
    batch: list[dict],
    ledger: Ledger,
    stop: asyncio.Event,
) -> None:
    stopped_at: float | None = None
    while True:
        if stop.is_set():
            stopped_at = stopped_at or time.monotonic()
            if time.monotonic() - stopped_at > GIVE_UP_AFTER_STOP:
                ledger.abandoned += len(batch)
                return
        delay = 0.05
        try:
            async with session.post(
                url + "/api/status", data=body, headers={"Content-Type": ctype}
            ) as r:
                ledger.http_requests[str(r.status)] += 1
                answer = await r.read()
                if r.status == 200:
                    _acknowledged(orjson.loads(answer), batch, ledger)
                    return
                if r.status == 503:
                    delay = min(float(r.headers.get("Retry-After", "0.2")), 0.5)
                elif r.status != 429:
                    ledger.anomalies.append(f"HTTP {r.status}: {answer[:200]!r}")
        except (aiohttp.ClientError, TimeoutError, ConnectionError):
            ledger.http_requests["no answer"] += 1
        await asyncio.sleep(delay)


def _acknowledged(answer: dict, batch: list[dict], ledger: Ledger) -> None:
    refused = {e.get("index") for e in answer.get("errors", [])}
    if refused:
        ledger.anomalies.append(f"valid events refused by the relay: {answer['errors'][:3]}")
    ledger.acked.update(e["message_id"] for i, e in enumerate(batch) if i not in refused)


# -- syslog over TCP --------------------------------------------------------------------------


async def syslog_listening(host: str, port: int, patience: float = 3.0) -> bool:
    """Whether something accepts TCP connections there (the relay opens it after HTTP)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
        except (OSError, TimeoutError):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.2)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True


def syslog_frame(event: dict) -> bytes:
    """RFC 6587 octet counting around an RFC 5424 message whose MSG is the JSON event."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    msg = f"<134>1 {stamp} chaos-host relay-chaos - status - ".encode() + orjson.dumps(event)
    return f"{len(msg)} ".encode() + msg


async def syslog_producer(
    host: str, port: int, ledger: Ledger, maker: EventMaker, stop: asyncio.Event, rate: float
) -> None:
    """Frames at about `rate` events/s over one connection, reconnecting when it breaks."""
    backoff = 0.1
    while not stop.is_set():
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
        except (OSError, TimeoutError):
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)
            continue
        backoff = 0.1
        conn = SyslogConnection(opened=time.time())
        ledger.syslog_connections.append(conn)
        number = len(ledger.syslog_connections) - 1
        try:
            while not stop.is_set():
                events = [maker.make() for _ in range(5)]
                for e in events:
                    ledger.syslog_sent[e["message_id"]] = (number, time.time())
                writer.write(b"".join(syslog_frame(e) for e in events))
                await asyncio.wait_for(writer.drain(), 30)
                await asyncio.sleep(len(events) / rate)
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 5)
        except (OSError, TimeoutError):
            pass
        finally:
            conn.closed = time.time()
            writer.transport.abort()
