"""The faults of a chaos campaign: what each kind does, the seeded plan, and the two lanes.

Faults run in two lanes at once, each one fault after another in a seeded random order: the relay
lane (SIGKILL of the relay, a full spool filesystem) and the upstream lane (SIGKILL, SIGSTOP,
token endpoint down, rejections; all four act on the one stand-in process, so they take turns).
Every fault heals itself before its lane moves on, and `heal_all` undoes whatever is left.

With `--backend jetstream` two relays share one stream on a 3-node NATS cluster, and the relay
lane holds SIGKILL of either relay, of one NATS node (every other time the stream's leader) and
of all three nodes; a relay then needs the cluster to start, so these take turns too.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.chaos_procs import Rig
from benchmarks.chaos_producers import MARKER, EventMaker, Ledger, http_producer


@dataclass(frozen=True)
class Kind:
    lane: str
    slot: float  # seconds of the run one fault of this kind is planned to take, gap included
    hold: tuple[float, float]  # how long the fault lasts, drawn uniformly


KINDS = {
    "relay_kill": Kind("relay", 3.0, (0.0, 0.5)),  # time dead before the restart
    "disk_full": Kind("relay", 5.0, (1.0, 2.0)),  # kept full after the relay first refuses
    "upstream_kill": Kind("upstream", 2.5, (0.3, 1.2)),  # pause before the restart
    "upstream_freeze": Kind("upstream", 3.4, (2.3, 3.2)),  # longer than request_timeout (2 s)
    "token_down": Kind("upstream", 3.5, (2.0, 3.5)),  # tokens live 5 s, refreshed at half-life
    "reject": Kind("upstream", 3.0, (1.5, 3.0)),
    # --backend jetstream
    "nats_node_kill": Kind("relay", 5.0, (0.5, 2.0)),  # time dead before the restart
    "nats_all_kill": Kind("relay", 8.0, (1.0, 2.5)),  # after the relays refuse
}
JETSTREAM_KINDS = ("nats_node_kill", "nats_all_kill")
LANES = ("relay", "upstream")
_MIB = 1 << 20
# While the filesystem is full, the spool still stores events in the free pages inside its file:
# a burst of large events, as many bytes as those pages and a margin, makes it need more.
BURST_EVENT = 20 * 1024  # bytes a burst event takes in the spool, about
BURST_MARGIN = 4 * _MIB
READY_AFTER_FREEING = 15.0  # the relay probes a failed spool every 2 s
NATS_NOTICED = 10.0  # seconds for every relay to refuse once no NATS node runs
READY_AFTER_NATS = 30.0  # ... and to be ready again once the nodes are back


@dataclass
class FaultRecord:
    number: int
    kind: str
    started: float  # wall clock
    offset: float  # seconds since the campaign started
    ended: float = float("inf")  # wall clock
    detail: str = ""


@dataclass
class Timeline:
    """What happened when; prints one line per fault."""

    t0: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.time)
    faults: list[FaultRecord] = field(default_factory=list)
    relay_kills: list[float] = field(default_factory=list)  # wall clock
    # (NATS fault began, every relay ready again), wall clock: the relays could not store
    outages: list[tuple[float, float]] = field(default_factory=list)
    toothless: Counter[str] = field(default_factory=Counter)  # faults the relay never noticed
    errors: list[str] = field(default_factory=list)

    def offset(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str) -> None:
        print(f"[{self.offset():7.1f}s] {text}", flush=True)

    def begin(self, kind: str) -> FaultRecord:
        record = FaultRecord(len(self.faults) + 1, kind, time.time(), self.offset())
        self.faults.append(record)
        return record

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(KINDS, 0)
        for f in self.faults:
            counts[f.kind] += 1
        return counts


def plan(kinds: list[str], seconds: float, rng: random.Random) -> list[str]:
    """Each kind equally often, as often as the lane's share of `seconds` allows; shuffled."""
    round_time = sum(KINDS[k].slot for k in kinds)
    rounds = max(1, int(seconds * 0.95 / round_time))
    order = [k for k in kinds for _ in range(rounds)]
    rng.shuffle(order)
    return order


class Injector:
    def __init__(
        self,
        rig: Rig,
        ledger: Ledger,
        timeline: Timeline,
        burst_maker: EventMaker,
        probe_maker: EventMaker | None = None,
    ) -> None:
        self.rig = rig
        self.relay = rig.relay
        self.upstream = rig.upstream
        self.filler = rig.filler
        self.ledger = ledger
        self.timeline = timeline
        self.burst_maker = burst_maker  # large events, sent while the filesystem is full
        self.probe_maker = probe_maker  # single events sent while no NATS node runs
        self.nats_node_kills = 0

    async def run_lane(self, kinds: list[str], rng: random.Random, end_at: float) -> None:
        """Inject `kinds` in order, spread evenly until `end_at` (monotonic)."""
        await asyncio.sleep(rng.uniform(0.5, 2.0))  # producers get going; lanes start apart
        for i, kind in enumerate(kinds):
            slot = max(0.0, (end_at - time.monotonic()) / (len(kinds) - i))
            started = time.monotonic()
            record = self.timeline.begin(kind)
            hold = rng.uniform(*KINDS[kind].hold)
            record.detail = await getattr(self, kind)(hold, rng)
            record.ended = time.time()
            took = time.monotonic() - started
            self.timeline.say(
                f"fault #{record.number:<3} {kind:<15} {took:4.1f} s  {record.detail}"
            )
            if slot > took:
                await asyncio.sleep(slot - took)

    async def relay_kill(self, hold: float, rng: random.Random) -> str:
        relays = self.rig.relays
        relay = relays[(self.timeline.counts()["relay_kill"] - 1) % len(relays)]  # in turn
        which = "" if len(relays) == 1 else f"{'abcdefgh'[relays.index(relay)]} "
        pid = relay.proc.pid
        if relay is self.relay:  # the one the syslog producer writes to
            self.timeline.relay_kills.append(time.time())
        await relay.kill()
        await asyncio.sleep(hold)
        started = time.monotonic()
        await relay.start()
        up = time.monotonic() - started
        return (
            f"SIGKILL relay {which}{pid}, dead {hold:.1f} s, healthy {up:.1f} s after the restart"
        )

    async def nats_node_kill(self, hold: float, rng: random.Random) -> str:
        """SIGKILL one node, every other time the one leading the stream; restart it."""
        nats = self.rig.nats
        self.nats_node_kills += 1
        leader = await nats.leader()
        followers = [n.name for n in nats.nodes if n.name != leader]
        name = leader if self.nats_node_kills % 2 else rng.choice(followers)
        node = nats.node(name)
        refused_before = self.ledger.http_requests["503"]
        began = time.time()
        pid = node.kill()
        await asyncio.sleep(hold)
        node.start()
        await node.listening()
        now = await nats.leader()
        restarted = time.monotonic()
        ready = await self._until(self._all_ready, READY_AFTER_NATS)
        self.timeline.outages.append((began, time.time()))
        if not ready:
            self.timeline.errors.append(
                f"nats_node_kill at {self.timeline.offset():.0f} s: relays not ready "
                f"{READY_AFTER_NATS:.0f} s after {name} came back"
            )
        refused = self.ledger.http_requests["503"] - refused_before
        role = "the stream leader" if name == leader else "a follower"
        again = f"ready {time.monotonic() - restarted:.1f} s after" if ready else "NOT READY"
        return (
            f"SIGKILL nats {name} ({role}) {pid}, dead {hold:.1f} s; "
            f"stream leader now {now}; {refused} x 503, {again}"
        )

    async def nats_all_kill(self, hold: float, rng: random.Random) -> str:
        """SIGKILL every node: each relay must refuse (readyz and ingest 503, a new event never
        200) until the nodes are back, then be ready again by itself."""
        nats = self.rig.nats
        refused_before = self.ledger.http_requests["503"]
        began = time.time()
        for node in nats.nodes:
            node.kill()
        killed = time.monotonic()
        noticed = await self._until(self._all_refuse, NATS_NOTICED)
        bite = f"all refused after {time.monotonic() - killed:.1f} s" if noticed else "NOT refused"
        self.timeline.toothless["nats_all_kill"] += not noticed
        if not noticed:
            self.timeline.errors.append(
                f"nats_all_kill at {self.timeline.offset():.0f} s: a relay did not refuse (readyz "
                f"and a new event 503) within {NATS_NOTICED:.0f} s of the last node's SIGKILL"
            )
        await asyncio.sleep(max(0.0, hold - (time.monotonic() - killed)))
        refused = self.ledger.http_requests["503"] - refused_before
        down = time.monotonic() - killed
        restarted = time.monotonic()
        await nats.start()
        await nats.leader()
        ready = await self._until(self._all_ready, READY_AFTER_NATS)
        self.timeline.outages.append((began, time.time()))
        if not ready:
            self.timeline.errors.append(
                f"nats_all_kill at {self.timeline.offset():.0f} s: relays not ready "
                f"{READY_AFTER_NATS:.0f} s after the nodes came back"
            )
        again = f"ready {time.monotonic() - restarted:.1f} s after" if ready else "NOT READY"
        return f"SIGKILL all nats nodes for {down:.1f} s, {bite}, {refused} x 503, {again}"

    async def _all_refuse(self) -> bool:
        """Every relay answers /readyz 503 with a reason, and a new event 503 (a 200 is an
        error: nothing can have stored it)."""
        for relay in self.rig.relays:
            status, _ = await relay.get("/readyz")
            if status != 503:
                return False
        for relay in self.rig.relays:
            event = self.probe_maker.make()
            status = await relay.post_event(event)
            if status == 200:
                self.timeline.errors.append(
                    f"a relay acknowledged {event['message_id']} while no NATS node ran"
                )
            if status != 503:
                return False
        return True

    async def _all_ready(self) -> bool:
        return all([(await r.get("/readyz"))[0] == 200 for r in self.rig.relays])

    async def disk_full(self, hold: float, rng: random.Random) -> str:
        """Fill the spool's filesystem, send a burst of large events until the relay refuses,
        hold, free."""
        headroom = rng.choice((0, 16 * 1024))
        refused_before = self.ledger.http_requests["503"]
        started = time.monotonic()
        written = await asyncio.to_thread(_fill, self.filler, headroom)
        free = self.rig.spool_free_bytes()
        events = ((free if free is not None else 8 * _MIB) + BURST_MARGIN) // BURST_EVENT
        stop_burst = asyncio.Event()
        burst = asyncio.create_task(
            http_producer(
                self.relay.url, self.ledger, self.burst_maker, stop_burst, 1e6, (20,), events
            )
        )
        try:
            bit = await self._until(lambda: self.ledger.http_requests["503"] > refused_before, 4.0)
            bite = f"503 after {time.monotonic() - started:.1f} s" if bit else "no 503 within 4 s"
            self.timeline.toothless["disk_full"] += not bit
            stop_burst.set()
            await asyncio.sleep(hold)
        finally:
            stop_burst.set()
            self.filler.unlink(missing_ok=True)
        freed = time.monotonic()
        ready = await self._relay_ready(READY_AFTER_FREEING)
        if not ready:
            st = os.statvfs(self.filler.parent)
            used = 1 - st.f_bavail / st.f_blocks
            self.timeline.errors.append(
                f"disk_full at {self.timeline.offset():.0f} s: relay not ready "
                f"{READY_AFTER_FREEING:.0f} s after the filler was removed "
                f"(filesystem {used:.0%} used, by the spool alone)"
            )
        await burst
        refused = self.ledger.http_requests["503"] - refused_before
        again = f"ready {time.monotonic() - freed:.1f} s after freeing" if ready else "NOT READY"
        return (
            f"filler {written / _MIB:.1f} MiB ({headroom // 1024} KiB left), "
            f"burst of {events} large events, {bite}, "
            f"held {hold:.1f} s more, {refused} x 503, {again}"
        )

    async def upstream_kill(self, hold: float, rng: random.Random) -> str:
        pid = self.upstream.proc.pid
        await self.upstream.kill()
        await asyncio.sleep(hold)
        started = time.monotonic()
        await self.upstream.start()
        up = time.monotonic() - started
        return f"SIGKILL stand-ins {pid}, restarted after {hold:.1f} s ({up:.1f} s to ready)"

    async def upstream_freeze(self, hold: float, rng: random.Random) -> str:
        self.upstream.freeze()
        try:
            await asyncio.sleep(hold)
        finally:
            self.upstream.thaw()
        return f"SIGSTOP stand-ins {self.upstream.proc.pid} for {hold:.1f} s, then SIGCONT"

    async def token_down(self, hold: float, rng: random.Random) -> str:
        await self.upstream.maskinporten_faults(unavailable=True)
        try:
            await asyncio.sleep(hold)
        finally:
            await self.upstream.maskinporten_faults(unavailable=False)
        return f"token endpoint answers 503 for {hold:.1f} s"

    async def reject(self, hold: float, rng: random.Random) -> str:
        await self.upstream.status_faults(reject_match={"description": MARKER})
        try:
            await asyncio.sleep(hold)
        finally:
            await self.upstream.status_faults(reject_match={})
        return f'upstream rejects description="{MARKER}" for {hold:.1f} s'

    async def heal_all(self) -> None:
        """Undo every fault, whatever state a lane was stopped in."""
        if self.filler is not None:
            self.filler.unlink(missing_ok=True)
        if self.rig.nats is not None:
            await self.rig.nats.start()
        self.upstream.thaw()
        if not self.upstream.alive:
            await self.upstream.start()
        await self.upstream.maskinporten_faults(unavailable=False)
        await self.upstream.status_faults(reject_match={})
        for relay in self.rig.relays:
            if not relay.alive:
                await relay.start()

    async def _relay_ready(self, timeout: float) -> bool:
        async def ready() -> bool:
            return (await self.relay.get("/readyz"))[0] == 200

        return await self._until(ready, timeout)

    @staticmethod
    async def _until(check, timeout: float) -> bool:
        """Poll `check` (plain or async) until it holds; False after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            outcome = check()
            if await outcome if asyncio.iscoroutine(outcome) else outcome:
                return True
            await asyncio.sleep(0.1)
        return False


def _fill(path: Path, headroom: int) -> int:
    """Write `path` until its filesystem has at most `headroom` bytes free; bytes written."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            st = os.statvfs(path)
            room = st.f_bavail * st.f_frsize - headroom
            if room <= 0:
                return written
            try:
                written += os.write(fd, b"\0" * min(room, _MIB))
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    return written
                raise
    finally:
        os.close(fd)
