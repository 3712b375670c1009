"""`make chaos`: a bounded chaos campaign against a real relay and real upstream stand-ins.

    python -m benchmarks.chaos [--seconds N] [--seed S] [--quick] [--backend jetstream]

Producers keep sending (HTTP: several at once, single events and NDJSON batches, each retried
until acknowledged; syslog TCP and RELP when the relay listens for them, RELP resending what
was not answered) while faults are injected in a
seeded random order (see benchmarks.chaos_faults). Then everything is healed, the backlog drains,
and the oracle (benchmarks.chaos_oracle) prints one table. Exit status 1 when an acknowledged
event was lost, something not of the deliberately rejected kind was dead-lettered, or the
backlog did not drain; 0 otherwise.

`--backend jetstream` (`make chaos CHAOS_ARGS="--backend jetstream"`) runs two relays on one
replicated stream of a 3-node NATS cluster (benchmarks.chaos_nats), the producers spread over
both, and adds SIGKILLs of NATS nodes to the relay lane.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from benchmarks.chaos_faults import JETSTREAM_KINDS, KINDS, LANES, Injector, Timeline, plan
from benchmarks.chaos_nats import Cluster, nats_server_binary, relay_env
from benchmarks.chaos_oracle import (
    StandInDrops,
    dead_letter_ids,
    judge,
    read_received,
    read_spooled,
    render,
)
from benchmarks.chaos_procs import Relay, Rig, Upstream, free_port, mount_tmpfs, unmount
from benchmarks.chaos_producers import (
    EventMaker,
    Ledger,
    http_producer,
    syslog_listening,
    syslog_producer,
)
from benchmarks.chaos_relp import relp_producer

RELAY_ENV = {
    "RELAY_UPSTREAM__REQUEST_TIMEOUT": "2s",
    "RELAY_UPSTREAM__KEEPALIVE_INTERVAL": "1s",
    "RELAY_UPSTREAM__KEEPALIVE_MAX_LIFETIME": "5s",
    "RELAY_RETRY__INITIAL_BACKOFF": "100ms",
    "RELAY_RETRY__MAX_BACKOFF": "2s",
    "RELAY_RETRY__MAX_REJECTIONS": "3",
}
TOKEN_LIFETIME = 5.0
# The spool's own limit stays well below its filesystem (indexes, duplicate keys and the WAL
# come on top), as in any sane deployment: the filler, not the spool, fills the disk.
TMPFS_SIZE = "128m"
SPOOL_MAX_BYTES = "32MiB"
PROGRESS_EVERY = 15.0
BURST_PADDING = 16_384  # bytes of description in the events of a disk-full burst
STREAM = "RELAY_CHAOS"


@dataclass(frozen=True)
class Options:
    seconds: float
    seed: int
    rate: float
    producers: int
    syslog_rate: float
    relp_rate: float
    marked_share: float
    drain_timeout: float
    workdir: Path | None
    keep: bool
    backend: str = "sqlite"


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.chaos", description=__doc__.split("\n")[0]
    )
    p.add_argument("--seconds", type=float, help="length of the fault phase (CHAOS_SECONDS, 300)")
    p.add_argument("--quick", action="store_true", help="a 60 s campaign")
    p.add_argument("--seed", type=int, help="seed of the fault order and the events (random)")
    p.add_argument("--rate", type=float, default=300.0, help="HTTP events/s, all producers (300)")
    p.add_argument("--producers", type=int, default=4, help="concurrent HTTP producers (4)")
    p.add_argument("--syslog-rate", type=float, default=50.0, help="syslog events/s (50)")
    p.add_argument("--relp-rate", type=float, default=50.0, help="RELP events/s (50)")
    p.add_argument("--marked-share", type=float, default=0.03, help="share of the rejected kind")
    p.add_argument("--drain-timeout", type=float, default=120.0, help="seconds (120)")
    p.add_argument("--workdir", type=Path, help="where logs and data go (a fresh temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work dir after a passing run")
    p.add_argument(
        "--backend",
        choices=("sqlite", "jetstream"),
        default="sqlite",
        help="the relay's spool: sqlite (one relay) or jetstream (two relays, 3 NATS nodes)",
    )
    args = vars(p.parse_args(argv))
    quick = args.pop("quick")
    if not args["seconds"]:
        args["seconds"] = 60.0 if quick else float(os.environ.get("CHAOS_SECONDS") or 300)
    if args["seed"] is None:
        args["seed"] = random.SystemRandom().randrange(1, 1_000_000)
    return Options(**args)


async def campaign(opts: Options) -> bool:
    work = opts.workdir or Path(tempfile.mkdtemp(prefix="chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    timeline = Timeline()
    timeline.say(
        f"chaos campaign ({opts.backend} spool): seed {opts.seed}, "
        f"{opts.seconds:.0f} s of faults, in {work}"
    )
    if opts.backend == "jetstream":
        return await _campaign_jetstream(opts, work, timeline)
    fs = work / "spoolfs"
    why = mount_tmpfs(fs, TMPFS_SIZE)
    if why is not None:
        timeline.say(f"filesystem-full faults are OFF: cannot mount a tmpfs ({why})")
    spool = (fs if why is None else work) / "spool"
    upstream = Upstream(work / "upstream", work / "upstream.log", TOKEN_LIFETIME)
    syslog_port, relp_port = free_port(), free_port()
    env = {
        **RELAY_ENV,
        "RELAY_SPOOL__PATH": str(spool),
        "RELAY_SPOOL__MAX_BYTES": SPOOL_MAX_BYTES,
        "RELAY_INGEST__SYSLOG__TCP_LISTEN": f"127.0.0.1:{syslog_port}",
        "RELAY_INGEST__RELP__LISTEN": f"127.0.0.1:{relp_port}",
    }
    relay = Relay(upstream.config, env, work / "relay.log")
    filler = fs / "filler" if why is None else None
    rig = Rig(relay, upstream, spool, filler, syslog_port, relp_port=relp_port)
    passed = False
    try:
        passed = await _run(opts, timeline, rig)
    finally:
        await relay.stop()
        await upstream.stop()
        if why is None:
            unmount(fs)
        if passed and not opts.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs and data kept in {work} (relay.log, upstream.log)", flush=True)
    return passed


async def _campaign_jetstream(opts: Options, work: Path, timeline: Timeline) -> bool:
    binary, why = nats_server_binary()
    if binary is None:
        timeline.say(f"cannot run the jetstream campaign: {why}")
        return False
    cluster = Cluster(work / "nats", binary, STREAM)
    upstream = Upstream(work / "upstream", work / "upstream.log", TOKEN_LIFETIME)
    syslog_port, relp_port = free_port(), free_port()
    relays = []
    for name in "ab":
        env = {
            **RELAY_ENV,
            **relay_env(cluster),
            "RELAY_SPOOL__PATH": str(work / f"relay-{name}"),
            "RELAY_SPOOL__MAX_BYTES": SPOOL_MAX_BYTES,
        }
        if name == "a":
            env["RELAY_INGEST__SYSLOG__TCP_LISTEN"] = f"127.0.0.1:{syslog_port}"
            env["RELAY_INGEST__RELP__LISTEN"] = f"127.0.0.1:{relp_port}"
        relays.append(Relay(upstream.config, env, work / f"relay-{name}.log"))
    rig = Rig(
        relays[0], upstream, work / "relay-a", None, syslog_port, relays[1:], cluster, relp_port
    )
    passed = False
    try:
        passed = await _run(opts, timeline, rig)
    finally:
        for relay in relays:
            await relay.stop()
        await upstream.stop()
        cluster.stop()
        if passed and not opts.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs and data kept in {work} (relay-*.log, upstream.log, nats/)", flush=True)
    return passed


async def _run(opts: Options, timeline: Timeline, rig: Rig) -> bool:
    say = timeline.say
    drops = StandInDrops()
    rig.upstream.before_exit = drops.read
    if rig.nats is not None:
        await rig.nats.start()
    await rig.upstream.start()
    for relay in rig.relays:
        await relay.start()
    syslog_on = await syslog_listening("127.0.0.1", rig.syslog_port)
    if not syslog_on:
        say(f"syslog producer is off: the relay does not listen on 127.0.0.1:{rig.syslog_port}")
    relp_on = await syslog_listening("127.0.0.1", rig.relp_port)
    if not relp_on:
        say(f"RELP producer is off: the relay does not listen on 127.0.0.1:{rig.relp_port}")
    ledger = Ledger()
    stop = asyncio.Event()
    producing = _start_producers(opts, rig, ledger, stop, syslog_on)
    if relp_on:
        maker = _maker(opts, ledger, "relp")
        relp = relp_producer("127.0.0.1", rig.relp_port, ledger.relp, maker, stop, opts.relp_rate)
        producing.append(asyncio.create_task(relp))
    progress = asyncio.create_task(_progress(rig.relay, ledger, timeline))
    burst = _maker(opts, ledger, "disk-full-burst", padding=BURST_PADDING)
    injector = Injector(rig, ledger, timeline, burst, _maker(opts, ledger, "nats-probe"))
    await _inject(opts, injector, timeline)

    say("last fault over: healing everything, producers finish their last batch")
    healed_at = time.monotonic()
    stop.set()
    await injector.heal_all()
    await asyncio.gather(*producing)
    progress.cancel()
    drain = await _drained(rig, healed_at, opts.drain_timeout)
    say("backlog NOT drained" if drain is None else f"backlog drained in {drain:.1f} s")

    dead = await _dead_letters(rig.relay, timeline)
    for relay in rig.relays:
        await relay.stop()
    await rig.upstream.stop()
    received = read_received(rig.upstream.received_db)
    spooled = read_spooled(rig.spool) if rig.nats is None else await rig.nats.message_ids()
    result = judge(ledger, received, dead, spooled, timeline, drain, drops, relp_on)
    print(f"\nchaos campaign ({opts.backend} spool), seed {opts.seed}, {opts.seconds:.0f} s")
    print(render(result, syslog_on, _off(rig)), flush=True)
    return result.passed


def _off(rig: Rig) -> dict[str, str]:
    """The fault kinds this rig cannot have, with why."""
    if rig.nats is not None:
        return {"disk_full": "skipped (jetstream spool: nothing on the relay's disk)"}
    off = dict.fromkeys(JETSTREAM_KINDS, "skipped (sqlite spool: --backend jetstream)")
    if rig.filler is None:
        off["disk_full"] = "skipped (no tmpfs)"
    return off


def _start_producers(
    opts: Options, rig: Rig, ledger: Ledger, stop: asyncio.Event, syslog_on: bool
) -> list[asyncio.Task]:
    each = opts.rate / opts.producers
    urls = [relay.url for relay in rig.relays]  # spread over the relays
    producers = [
        http_producer(urls[i % len(urls)], ledger, _maker(opts, ledger, f"http-{i}"), stop, each)
        for i in range(opts.producers)
    ]
    if syslog_on:
        maker = _maker(opts, ledger, "syslog")
        producers.append(
            syslog_producer("127.0.0.1", rig.syslog_port, ledger, maker, stop, opts.syslog_rate)
        )
    return [asyncio.create_task(p) for p in producers]


async def _inject(opts: Options, injector: Injector, timeline: Timeline) -> None:
    """Both lanes at once, each its seeded plan; a failing lane stops the other."""
    if injector.rig.nats is not None:
        relay_lane = ["relay_kill", *JETSTREAM_KINDS]
    else:
        relay_lane = ["relay_kill"] + (["disk_full"] if injector.rig.filler is not None else [])
    lanes = {
        "relay": relay_lane,
        "upstream": [k for k, kind in KINDS.items() if kind.lane == "upstream"],
    }
    plans = {
        lane: plan(lanes[lane], opts.seconds, random.Random(f"{opts.seed}-plan-{lane}"))
        for lane in LANES
    }
    planned = {k: sum(p.count(k) for p in plans.values()) for k in KINDS}
    timeline.say("plan: " + ", ".join(f"{k} x{n}" for k, n in planned.items() if n))
    end_at = time.monotonic() + opts.seconds
    injecting = [
        asyncio.create_task(
            injector.run_lane(plans[lane], random.Random(f"{opts.seed}-{lane}"), end_at)
        )
        for lane in LANES
    ]
    try:
        await asyncio.gather(*injecting)
    except Exception as exc:
        timeline.errors.append(f"fault injection failed: {type(exc).__name__}: {exc}")
        timeline.say(timeline.errors[-1])
        for task in injecting:
            task.cancel()
        await asyncio.gather(*injecting, return_exceptions=True)


async def _dead_letters(relay: Relay, timeline: Timeline) -> dict[str, str]:
    listing = await relay.cli("dlq", "list", "--json", "--limit", "100000000")
    if listing.returncode != 0:
        timeline.errors.append(f"relay dlq list failed: {listing.stderr.decode().strip()}")
        return {}
    return dead_letter_ids(orjson.loads(listing.stdout))


def _maker(opts: Options, ledger: Ledger, name: str, padding: int = 0) -> EventMaker:
    rng = random.Random(f"{opts.seed}-{name}")
    return EventMaker(rng, ledger, opts.marked_share, padding)


async def _drained(rig: Rig, since: float, timeout: float) -> float | None:
    """Seconds from `since` until the spool is empty (the relay's, or the shared stream), or
    None after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if rig.nats is not None:
            empty = await rig.nats.messages() == 0
        else:
            _, status = await rig.relay.get("/status")
            empty = status is not None and status["spool"]["events"] == 0
        if empty:
            return time.monotonic() - since
        await asyncio.sleep(0.2)
    return None


async def _progress(relay: Relay, ledger: Ledger, timeline: Timeline) -> None:
    while True:
        await asyncio.sleep(PROGRESS_EVERY)
        _, status = await relay.get("/status")
        depth = status["spool"]["events"] if status else "?"
        timeline.say(
            f"progress: {len(ledger.acked)} acknowledged, {len(ledger.syslog_sent)} via syslog, "
            f"{len(ledger.relp.acked)} via RELP, "
            f"relay backlog {depth}"
        )


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        return 0 if asyncio.run(campaign(opts)) else 1
    return 130


if __name__ == "__main__":
    sys.exit(main())
