"""RELP producers for a chaos campaign: acknowledged syslog, the way librelp sends it.

A producer keeps a window of frames in flight on one connection. An event counts as
acknowledged once its ``rsp 200`` arrives; when the connection breaks (a relay SIGKILL, the relay
closing it after holding answers while its spool refused) every unanswered event is sent again
on the next connection with new transaction numbers, as librelp does. So the oracle's check for
RELP is the same as for HTTP: every acknowledged event is delivered, none is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import orjson

from benchmarks.chaos_producers import GIVE_UP_AFTER_STOP, EventMaker, RelpLedger

WINDOW = 64  # frames in flight on one connection, as omrelp's default window is 128
OFFERS = b"relp_version=0\nrelp_software=chaos,1\ncommands=syslog"


@dataclass
class RelpRow:
    """What the oracle says about the RELP producers."""

    acked: int
    sent: int
    delivered: int  # acknowledged and delivered (or dead-lettered, rejected kind)
    lost: list[str]  # acknowledged, neither delivered nor still queued (must be none)
    queued: int  # acknowledged, still in the spool at the end (must be 0)
    connections: int
    resent: int
    refused: int
    abandoned: int


def judge_relp(ledger: RelpLedger, accounted: set[str], spooled: set[str]) -> RelpRow:
    missing = ledger.acked - accounted
    return RelpRow(
        acked=len(ledger.acked),
        sent=len(ledger.sent),
        delivered=len(ledger.acked & accounted),
        lost=sorted(missing - spooled),
        queued=len(missing & spooled),
        connections=ledger.connections,
        resent=ledger.resent,
        refused=ledger.refused,
        abandoned=ledger.abandoned,
    )


def relp_errors(row: RelpRow) -> list[str]:
    errors = []
    if row.lost:
        errors.append(f"{len(row.lost)} RELP-acknowledged event(s) LOST, e.g. {row.lost[:5]}")
    if row.queued:
        errors.append(f"{row.queued} RELP-acknowledged event(s) never delivered (still queued)")
    if row.refused:
        errors.append(f"the relay answered {row.refused} RELP frame(s) with other than 200")
    return errors


def relp_rows(row: RelpRow | None) -> list[tuple[str, str]]:
    if row is None:
        return [("RELP events sent", "off (the relay does not listen for RELP)")]
    return [
        ("RELP events acknowledged (rsp 200)", f"{row.acked} of {row.sent} sent"),
        ("  delivered (or dead-lettered, rejected kind)", str(row.delivered)),
        ("  LOST (must be 0)", str(len(row.lost))),
        ("  still queued at the end", str(row.queued)),
        ("  connections / frames resent after a break", f"{row.connections} / {row.resent}"),
        ("  given up unanswered after the stop", str(row.abandoned)),
    ]


def relp_message(event: dict) -> bytes:
    """What rsyslog's omrelp sends by default (RSYSLOG_ForwardFormat) around the JSON event."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    return f"<134>{stamp} chaos-host eformidling-status: ".encode() + orjson.dumps(event)


async def relp_producer(
    host: str, port: int, ledger: RelpLedger, maker: EventMaker, stop: asyncio.Event, rate: float
) -> None:
    """Events at about `rate` per second; unanswered ones resent after every reconnect."""
    unanswered: dict[str, bytes] = {}  # message_id: message, in the order first sent
    stopped_at: float | None = None
    backoff = 0.1
    while True:
        if stop.is_set():
            stopped_at = stopped_at or time.monotonic()
            if not unanswered:
                return
            if time.monotonic() - stopped_at > GIVE_UP_AFTER_STOP:
                ledger.abandoned += len(unanswered)
                return
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
        except (OSError, TimeoutError):
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)
            continue
        backoff = 0.1
        ledger.connections += 1
        try:
            await _session(reader, writer, ledger, maker, stop, rate, unanswered)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()


async def _session(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    ledger: RelpLedger,
    maker: EventMaker,
    stop: asyncio.Event,
    rate: float,
    unanswered: dict[str, bytes],
) -> None:
    txnr = 1
    writer.write(b"1 open %d %s\n" % (len(OFFERS), OFFERS))
    first = await _read_frame(reader)
    if first is None or first[1] != "rsp" or not first[2].startswith(b"200"):
        raise ValueError(f"open refused: {first!r}")
    in_flight: dict[int, str] = {}  # txnr: message_id
    queue = list(unanswered)  # resend what the last connection left unanswered
    ledger.resent += len(queue)

    def send(message_id: str) -> None:
        nonlocal txnr
        txnr += 1
        message = unanswered[message_id]
        writer.write(b"%d syslog %d %s\n" % (txnr, len(message), message))
        in_flight[txnr] = message_id

    async def answers() -> None:
        while True:
            frame = await _read_frame(reader)
            if frame is None:
                raise ConnectionResetError("closed by the relay")
            number, command, data = frame
            if command == "serverclose":
                raise ConnectionResetError("serverclose")
            message_id = in_flight.pop(number, None)
            if message_id is None:
                continue
            if data.startswith(b"200"):
                ledger.acked.add(message_id)
                unanswered.pop(message_id, None)
            else:
                ledger.refused += 1

    reading = asyncio.create_task(answers())
    stop_seen: float | None = None
    try:
        while not reading.done():
            if stop.is_set():
                stop_seen = stop_seen or time.monotonic()
                if not queue and not unanswered:
                    break
                if time.monotonic() - stop_seen > GIVE_UP_AFTER_STOP:
                    return  # the caller gives up on what is unanswered
            if len(in_flight) >= WINDOW:
                await asyncio.wait([reading], timeout=0.01)
                continue
            if queue:
                send(queue.pop(0))
                continue
            if stop.is_set():
                await asyncio.wait([reading], timeout=0.05)
                continue
            event = maker.make()
            unanswered[event["message_id"]] = relp_message(event)
            ledger.sent.add(event["message_id"])
            send(event["message_id"])
            await asyncio.wait_for(writer.drain(), 30)
            await asyncio.wait([reading], timeout=1 / rate)
        if reading.done():
            reading.result()  # raises why it ended
        writer.write(b"%d close 0\n" % (txnr + 1))
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reading


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, str, bytes] | None:
    """(txnr, command, data) of the next frame, or None at end of stream."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b" "), 60)
        command = await reader.readuntil(b" ")
        length_text = b""
        while (c := await reader.readexactly(1)) not in b" \n":
            length_text += c
    except asyncio.IncompleteReadError:
        return None
    length = int(length_text)
    data = b""
    if c == b" ":
        data = await reader.readexactly(length)
        await reader.readexactly(1)  # the trailer
    return int(head), command.strip().decode(), data
