"""The oracle of a chaos campaign: what was acknowledged against what arrived, and the table.

An HTTP-acknowledged event is accounted for when the upstream received it, or when it is of the
deliberately rejected kind and sits in the dead-letter table. Anything else acknowledged is lost
(or, if the backlog never drained, still queued); both fail the run. A syslog event has no
acknowledgement: missing ones are tolerated only when written on a connection that a relay
SIGKILL cut, in the last `SYSLOG_WINDOW` seconds before the kill or after it. With the jetstream
spool, a relay cannot store while NATS is down or electing a leader and reads no more meanwhile:
frames written from the start of such an outage until `SYSLOG_WINDOW` after the relays were ready
again wait in the relay, and are tolerated as in flight when a kill within that span cut them.

The status-service stand-in acknowledges what it cannot use (as the real service does) and
counts it as `dropped`: an event delivered that way is gone for good, so the count must be 0, as
the end-to-end tests assert. The stand-in counts from 0 in each process, so whoever kills or
stops it reads `/api/stats` first (`StandInDrops.read`) and the oracle gets the sum.

Duplicates: every copy the upstream received beyond the first is an extra copy. A burst is a
run of extra copies less than `BURST_GAP` s apart; the largest is reported with the faults that
were in progress (or over for less than `LINGER` s) between the earliest previous copy of its
events and its first extra copy: one of them caused it.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import aiohttp
import orjson

from benchmarks.chaos_faults import KINDS, FaultRecord, Timeline
from benchmarks.chaos_producers import Ledger
from benchmarks.chaos_relp import RelpRow, judge_relp, relp_errors, relp_rows

SYSLOG_WINDOW = 5.0  # a relay that refuses to store stops reading: frames wait in its kernel
BURST_GAP = 1.0
LINGER = 2.0  # seconds a fault's effects are taken to outlast it


def read_received(db: Path) -> list[tuple[str, float]]:
    """(message_id, received at, wall clock) of every event the upstream stored, in order."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT message_id, received_at FROM events ORDER BY id").fetchall()
    finally:
        conn.close()
    return [(m, datetime.fromisoformat(at).timestamp()) for m, at in rows]


def read_spooled(spool: Path) -> set[str]:
    """message_ids still waiting in a (stopped) relay's spool."""
    conn = sqlite3.connect(f"file:{spool / 'spool.db'}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT body FROM events").fetchall()
    finally:
        conn.close()
    return {orjson.loads(body).get("message_id") for (body,) in rows}


def dead_letter_ids(listing: list[dict]) -> dict[str, str]:
    """message_id -> reason, from `relay dlq list --json`."""
    dead = {}
    for letter in listing:
        try:
            message_id = orjson.loads(letter["event"]).get("message_id")
        except (orjson.JSONDecodeError, AttributeError):
            message_id = f"(unparsable dead letter {letter.get('id')})"
        dead[str(message_id)] = letter.get("reason", "?")
    return dead


@dataclass
class StandInDrops:
    """What the status stand-in acknowledged and dropped, summed over its processes."""

    total: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    readings: int = 0
    unread: list[str] = field(default_factory=list)  # why a reading failed

    def add(self, stats: dict) -> None:
        """One process's `/api/stats`, read just before it was killed or stopped."""
        self.readings += 1
        self.total += int(stats["dropped"])
        self.by_reason.update(stats.get("dropped_by_reason") or {})

    async def read(self, status_url: str, timeout: float = 5.0) -> None:
        """Read the stand-in's counters; a failure is recorded (and reported), not raised."""
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
                session.get(status_url + "/api/stats") as r,
            ):
                r.raise_for_status()
                self.add(orjson.loads(await r.read()))
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError, KeyError) as exc:
            self.unread.append(f"{type(exc).__name__}: {exc}")


@dataclass
class Result:
    faults: dict[str, int]
    toothless: Counter[str]
    acked: int
    delivered: int
    dead_only: int  # acknowledged, of the rejected kind, dead-lettered and never delivered
    dead_total: int
    lost: list[str]
    queued: list[str]
    duplicated_events: int
    extra_copies: int
    most_copies: int
    bursts: list[Burst]
    started: float  # wall clock, for offsets
    dead_rejected_kind: int
    dead_other: dict[str, str]
    phantoms: int
    syslog_sent: int
    syslog_delivered: int
    syslog_in_flight: list[float]  # seconds each was written before the kill that cut it
    syslog_lost: list[str]
    drain_seconds: float | None
    http_requests: dict[str, int]
    abandoned: int
    stand_in_drops: StandInDrops | None = None  # None: the campaign did not read them
    relp: RelpRow | None = None  # None: no RELP producer ran
    errors: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.errors


def judge(
    ledger: Ledger,
    received: list[tuple[str, float]],
    dead: dict[str, str],
    spooled: set[str],
    timeline: Timeline,
    drain_seconds: float | None,
    drops: StandInDrops | None = None,
    relp_on: bool = False,
) -> Result:
    copies = Counter(m for m, _ in received)
    accounted = set(copies) | (set(dead) & ledger.marked)
    acked = ledger.acked
    missing = acked - accounted
    lost = sorted(missing - spooled)
    queued = sorted(missing & spooled)
    bursts = _bursts(received, timeline.faults)
    dead_other = {m: r for m, r in dead.items() if m not in ledger.marked}
    syslog_missing = set(ledger.syslog_sent) - accounted - spooled
    outages = _merged(timeline.outages)
    before = {m: _before_kill(m, ledger, timeline.relay_kills, outages) for m in syslog_missing}
    in_flight = {m: t for m, t in before.items() if t is not None}
    result = Result(
        faults=timeline.counts(),
        toothless=timeline.toothless,
        acked=len(acked),
        delivered=len(acked & set(copies)),
        dead_only=len((acked & set(dead) & ledger.marked) - set(copies)),
        dead_total=len(dead),
        lost=lost,
        queued=queued,
        duplicated_events=sum(1 for n in copies.values() if n > 1),
        extra_copies=sum(n - 1 for n in copies.values()),
        most_copies=max(copies.values(), default=0),
        bursts=bursts,
        started=timeline.started,
        dead_rejected_kind=len(set(dead) & ledger.marked),
        dead_other=dead_other,
        phantoms=len(set(copies) - ledger.made),
        syslog_sent=len(ledger.syslog_sent),
        syslog_delivered=len(set(ledger.syslog_sent) & accounted),
        syslog_in_flight=sorted(in_flight.values()),
        syslog_lost=sorted(syslog_missing - set(in_flight)),
        drain_seconds=drain_seconds,
        http_requests=dict(ledger.http_requests),
        abandoned=ledger.abandoned,
        stand_in_drops=drops,
        relp=judge_relp(ledger.relp, accounted, spooled) if relp_on else None,
        errors=list(timeline.errors),
    )
    _errors(result, ledger)
    return result


def _errors(r: Result, ledger: Ledger) -> None:
    if r.lost:
        r.errors.append(f"{len(r.lost)} acknowledged event(s) LOST, e.g. {r.lost[:5]}")
    if r.queued:
        r.errors.append(f"{len(r.queued)} acknowledged event(s) never delivered (still queued)")
    if r.drain_seconds is None:
        r.errors.append("the backlog did not drain before the deadline")
    if r.dead_other:
        sample = list(r.dead_other.items())[:5]
        r.errors.append(
            f"{len(r.dead_other)} event(s) not of the rejected kind dead-lettered: {sample}"
        )
    if r.syslog_lost:
        r.errors.append(f"{len(r.syslog_lost)} syslog event(s) lost outside a relay kill")
    if r.relp is not None:
        r.errors += relp_errors(r.relp)
    if r.phantoms:
        r.errors.append(f"{r.phantoms} event(s) upstream that no producer made")
    if r.stand_in_drops is not None and r.stand_in_drops.total:
        reasons = dict(r.stand_in_drops.by_reason)
        r.errors.append(
            f"the status stand-in acknowledged and dropped {r.stand_in_drops.total}: {reasons}"
        )
    r.errors += [f"producer: {a}" for a in ledger.anomalies[:5]]


@dataclass
class Burst:
    copies: int
    start: float  # wall clock of its first extra copy
    seconds: float
    faults: list[str]  # in progress (or over for less than LINGER s) around it


def _bursts(received: list[tuple[str, float]], faults: list[FaultRecord]) -> list[Burst]:
    """Runs of extra copies with less than BURST_GAP s between them, largest first."""
    extras: list[tuple[float, float]] = []  # (received at, previous copy received at)
    last_copy: dict[str, float] = {}
    for message_id, at in received:
        if message_id in last_copy:
            extras.append((at, last_copy[message_id]))
        last_copy[message_id] = at
    extras.sort()
    runs: list[list[tuple[float, float]]] = []
    for extra in extras:
        if runs and extra[0] - runs[-1][-1][0] < BURST_GAP:
            runs[-1].append(extra)
        else:
            runs.append([extra])
    bursts = []
    for run in runs:
        since, until = min(prev for _, prev in run), run[0][0]
        around = [
            f"#{f.number} {f.kind}"
            for f in faults
            if f.started <= until and since <= f.ended + LINGER
        ]
        bursts.append(Burst(len(run), run[0][0], run[-1][0] - run[0][0], around))
    return sorted(bursts, key=lambda b: -b.copies)


def _merged(outages: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Outages that follow one another within SYSLOG_WINDOW are one: what waited through the
    first was not stored before the next began."""
    merged: list[tuple[float, float]] = []
    for start, ready in sorted(outages):
        if merged and start <= merged[-1][1] + SYSLOG_WINDOW:
            merged[-1] = (merged[-1][0], max(ready, merged[-1][1]))
        else:
            merged.append((start, ready))
    return merged


def _before_kill(
    message_id: str, ledger: Ledger, kills: list[float], outages: list[tuple[float, float]]
) -> float | None:
    """Seconds the syslog event was written before a relay kill that cut its connection
    (negative: after it), if one did within SYSLOG_WINDOW; else None."""
    number, written = ledger.syslog_sent[message_id]
    conn = ledger.syslog_connections[number]
    closed = conn.closed if conn.closed is not None else float("inf")
    for kill in kills:
        if not conn.opened <= kill <= closed or written > closed:
            continue
        if kill - SYSLOG_WINDOW <= written:
            return kill - written
        for start, ready in outages:
            if start <= written <= ready + SYSLOG_WINDOW and start <= kill <= ready + SYSLOG_WINDOW:
                return kill - written
    return None


def render(r: Result, syslog_on: bool, off: dict[str, str]) -> str:
    """The table; `off`: the fault kinds this campaign could not inject, with why."""
    rows: list[tuple[str, str]] = [("faults injected", str(sum(r.faults.values())))]
    for kind in KINDS:
        value = str(r.faults[kind])
        if r.toothless[kind]:
            value += f" ({r.toothless[kind]} never refused by the relay: no 503)"
        if kind in off:
            value = off[kind]
        rows.append((f"  {kind}", value))
    rows += [
        ("events acknowledged (HTTP 200)", str(r.acked)),
        ("  delivered upstream", str(r.delivered)),
        ("  dead-lettered (rejected kind), never delivered", str(r.dead_only)),
        ("  LOST (must be 0)", str(len(r.lost))),
        ("  still queued at the end", str(len(r.queued))),
        ("duplicated events / extra copies", f"{r.duplicated_events} / {r.extra_copies}"),
        ("  most copies of one event", str(r.most_copies)),
        ("  bursts (runs < 1 s apart) / largest", _largest(r)),
        ("  faults around the largest burst", ", ".join(r.bursts[0].faults) if r.bursts else "-"),
        ("dead letters / of the rejected kind", f"{r.dead_total} / {r.dead_rejected_kind}"),
        ("  not of the rejected kind (must be 0)", str(len(r.dead_other))),
        ("events upstream nobody sent (must be 0)", str(r.phantoms)),
        ("acknowledged and dropped by the stand-in (must be 0)", _dropped(r.stand_in_drops)),
    ]
    if syslog_on:
        rows += [
            ("syslog events sent (no ack)", str(r.syslog_sent)),
            ("  delivered (or dead-lettered, rejected kind)", str(r.syslog_delivered)),
            ("  lost in flight at a relay SIGKILL", _in_flight(r.syslog_in_flight)),
            ("  lost otherwise (must be 0)", str(len(r.syslog_lost))),
        ]
    else:
        rows.append(("syslog events sent", "off (the relay does not listen for syslog TCP)"))
    rows += relp_rows(r.relp)
    drain = f"{r.drain_seconds:.1f} s" if r.drain_seconds is not None else "did not drain"
    rows += [
        ("backlog drained after the last fault in", drain),
        ("producer HTTP answers", _pairs(dict(sorted(r.http_requests.items())))),
        ("events given up unacknowledged after the stop", str(r.abandoned)),
        ("verdict", "PASS" if r.passed else "FAIL"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines += [f"ERROR: {e}" for e in r.errors]
    return "\n".join(lines)


def _dropped(drops: StandInDrops | None) -> str:
    if drops is None:
        return "not read"
    text = str(drops.total)
    if drops.total:
        text += f" ({_pairs(dict(drops.by_reason))})"
    text += f", over {drops.readings} stand-in process(es)"
    if drops.unread:
        text += f"; {len(drops.unread)} unread ({drops.unread[0]})"
    return text


def _pairs(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items()) or "-"


def _largest(r: Result) -> str:
    if not r.bursts:
        return "0"
    b = r.bursts[0]
    return (
        f"{len(r.bursts)} / {b.copies} extra copies in {b.seconds:.1f} s "
        f"at {b.start - r.started:.1f} s"
    )


def _in_flight(before_kill: list[float]) -> str:
    if not before_kill:
        return "0"
    return (
        f"{len(before_kill)} (written {before_kill[0]:.2f} to {before_kill[-1]:.2f} s "
        "before the kill; negative: after)"
    )
