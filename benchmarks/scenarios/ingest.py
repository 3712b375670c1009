"""Scenarios 1 and 2: events acknowledged (200, stored and fsynced) by the relay's HTTP ingest."""

from __future__ import annotations

import re
import subprocess

import orjson

from benchmarks import wrk
from benchmarks.context import CpuShare, Ctx, Lines, log
from benchmarks.procs import PY, Procs, free_port
from benchmarks.report import Row, Target, median

NO_DELIVERY = {}  # no Maskinporten settings: the relay only accepts and stores


def loadgen(
    url: str, connections: int, seconds: float, batch: int = 1, by_answer: bool = False
) -> dict:
    args = [PY, "-m", "benchmarks.loadgen", "--url", url, "--connections", str(connections)]
    args += ["--duration", str(seconds), "--batch", str(batch)]
    args += ["--by-answer"] if by_answer else []
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60, check=True)
    return orjson.loads(out.stdout)


def push(url: str, seconds: float, connections: int = 64) -> dict:
    """One event per POST as fast as `connections` producers can: wrk if there, else loadgen."""
    if wrk.available():
        return wrk.run(url, connections, seconds)
    return loadgen(url, connections, seconds)


def metric(text: str, name: str) -> float:
    """The sum of a metric's samples in /metrics text."""
    pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", re.M)
    return sum(float(v) for v in pattern.findall(text))


def single_events(ctx: Ctx) -> list[Row]:
    """1: one event per POST, 64 connections, vs a bare aiohttp handler that stores nothing."""
    rounds, seconds = ctx.pick((2, 2.0), (5, 5.0))
    folder = ctx.workdir("ingest-single")
    use_wrk = wrk.available()
    with Procs(folder) as procs:
        relay = procs.relay(folder / "spool", env=NO_DELIVERY)
        relay.start()
        port = free_port()
        bare = procs.python(
            "benchmarks.baselines.ingest_server", "--port", str(port), log="bare.log"
        )
        Lines(bare.spawn(stdout=subprocess.PIPE).stdout).next(30)
        targets = {
            "relay": f"{relay.url}/api/status",
            "bare": f"http://127.0.0.1:{port}/api/status",
        }
        pids = {"relay": relay.pid, "bare": bare.pid}
        got: dict[str, list[dict]] = {"relay": [], "bare": []}
        for i in range(rounds):
            for name in ("relay", "bare") if i % 2 == 0 else ("bare", "relay"):
                cpu = CpuShare(server=pids[name])
                r = push(targets[name], seconds)
                r.update(cpu.done())
                r["cpu_us_per_event"] = round(1e6 * r["server_cpu"] / r["events_per_s"], 1)
                got[name].append(r)
                log(f"ingest 1/POST {name}: {r['events_per_s']:,.0f} events/s")
        text = relay.metrics()
    stored = metric(text, "relay_spool_events")
    acked = sum(r["ok"] for r in got["relay"])
    dups = metric(text, "relay_duplicate_events_total")
    return [
        Row(
            "1",
            "ingest, 1 event/POST, 64 connections",
            median([r["events_per_s"] for r in got["relay"]]),
            "events/s",
            baseline=median([r["events_per_s"] for r in got["bare"]]),
            baseline_what="bare aiohttp + orjson",
            targets=[Target("ratio>=", 0.7)],
            details={
                "load_generator": "wrk -t1 -c64" if use_wrk else "benchmarks.loadgen -c64",
                "seconds_per_round": seconds,
                "rounds": got,
                "check": {"acknowledged": acked, "stored": stored, "duplicates": dups},
            },
        )
    ]


def ndjson(ctx: Ctx) -> list[Row]:
    """2: NDJSON bodies of 1 000 events."""
    rounds, seconds = ctx.pick((2, 2.0), (5, 5.0))
    connections = 8
    folder = ctx.workdir("ingest-ndjson")
    with Procs(folder) as procs:
        relay = procs.relay(folder / "spool", env=NO_DELIVERY)
        relay.start()
        got = []
        for _ in range(rounds):
            cpu = CpuShare(relay=relay.pid)
            r = loadgen(f"{relay.url}/api/status", connections, seconds, batch=1000)
            r.update(cpu.done())
            r["cpu_us_per_event"] = round(1e6 * r["relay_cpu"] / r["events_per_s"], 1)
            got.append(r)
            log(f"ingest NDJSON x1000: {r['events_per_s']:,.0f} events/s")
    return [
        Row(
            "2",
            "ingest, NDJSON 1 000 events/POST",
            median([r["events_per_s"] for r in got]),
            "events/s",
            targets=[Target(">=", 150_000, "events/s")],
            details={"connections": connections, "seconds_per_round": seconds, "rounds": got},
        )
    ]
