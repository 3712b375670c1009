"""Scenarios 1j-3j: rows 1-3 with `spool.backend = "jetstream"` beside the SQLite spool.

Each row measures both backends itself, in alternating rounds (ABBA) in the same run, and
reports jetstream ÷ sqlite: the figure is the relay on a stream with three replicas on a
three-node cluster on loopback (`sync_interval: always`, benchmarks/natscluster.py), the
baseline the same relay on its SQLite spool, set up as in rows 1-3. The NATS servers' CPU is in
the notes (the sum of the three, as a share of one core).
"""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

import orjson

from benchmarks.context import CpuShare, Ctx, log
from benchmarks.events import message_id, new_run_tag, producer_template
from benchmarks.natscluster import NatsCluster
from benchmarks.procs import Procs
from benchmarks.report import Row, median
from benchmarks.scenarios.delivery import _timeout, relay_round
from benchmarks.scenarios.ingest import NO_DELIVERY, loadgen, metric, push
from benchmarks.spoolgen import build_spool
from benchmarks.upstreams import StandIn

BACKENDS = ("jetstream", "sqlite")
BASELINE = "sqlite spool, same run"


def _order(i: int) -> tuple[str, str]:
    return BACKENDS if i % 2 == 0 else BACKENDS[::-1]


def _cpu(cluster: NatsCluster, **pids: int) -> CpuShare:
    return CpuShare(**pids, **cluster.pids())


def _nats_cpu(shares: dict[str, float], cluster: NatsCluster) -> float:
    """The three servers' CPU, summed, out of the shares CpuShare.done() gave."""
    return round(sum(shares.pop(f"{name}_cpu") for name in cluster.pids()), 2)


def _row(rid: str, what: str, got: dict[str, list[dict]], details: dict, cpu_key: str) -> Row:
    js = got["jetstream"]
    busy = median([r[cpu_key] for r in js]), median([r["nats_cpu"] for r in js])
    return Row(
        rid,
        what,
        median([r["events_per_s"] for r in js]),
        "events/s",
        baseline=median([r["events_per_s"] for r in got["sqlite"]]),
        baseline_what=BASELINE,
        details={**details, "rounds": got},
        note=f"jetstream runs: CPU relay {busy[0]:.0%}, NATS servers {busy[1]:.0%} (three)",
    )


def _ingest(ctx: Ctx, rid: str, what: str, folder_name: str, measure) -> Row:
    """Both relays up at once, delivery off; rounds alternate between them."""
    rounds = ctx.pick(2, 5)
    folder = ctx.workdir(folder_name)
    with Procs(folder) as procs:
        cluster = procs.nats_cluster().start()
        relays = {
            "jetstream": procs.relay(folder / "spool-jetstream", env=cluster.relay_env()),
            "sqlite": procs.relay(folder / "spool-sqlite", env=NO_DELIVERY),
        }
        for relay in relays.values():
            relay.start()
        got: dict[str, list[dict]] = {name: [] for name in BACKENDS}
        for i in range(rounds):
            for name in _order(i):
                cpu = _cpu(cluster, relay=relays[name].pid)
                r = measure(f"{relays[name].url}/api/status")
                r.update(cpu.done())
                r["nats_cpu"] = _nats_cpu(r, cluster)
                if r["events_per_s"]:
                    r["relay_cpu_us_per_event"] = round(1e6 * r["relay_cpu"] / r["events_per_s"], 1)
                got[name].append(r)
                log(f"{rid} {name}: {r['events_per_s']:,.0f} events/s")
        stored = {n: metric(relays[n].metrics(), "relay_spool_events") for n in BACKENDS}
    return _row(rid, what, got, {"stored_at_end": stored}, "relay_cpu")


def ingest_single(ctx: Ctx) -> list[Row]:
    """1j: one event per POST, 64 connections (wrk when installed), as row 1."""
    seconds = ctx.pick(2.0, 5.0)
    return [
        _ingest(
            ctx,
            "1j",
            "ingest, 1 event/POST, jetstream R3 vs sqlite",
            "jetstream-ingest-single",
            lambda url: push(url, seconds),
        )
    ]


def ingest_ndjson(ctx: Ctx) -> list[Row]:
    """2j: NDJSON bodies of 1 000 events, 8 connections, as row 2, but in longer rounds and
    counting every answer within a round, whenever sent: a request to the jetstream relay takes
    about 2 s here, and row 2's way (requests sent and answered within the round) would count
    none in 2 s and undercount either backend by about one request per connection."""
    seconds = ctx.pick(8.0, 10.0)
    return [
        _ingest(
            ctx,
            "2j",
            "ingest, NDJSON 1 000 events/POST, jetstream R3 vs sqlite",
            "jetstream-ingest-ndjson",
            lambda url: loadgen(url, 8, seconds, batch=1000, by_answer=True),
        )
    ]


# ---- delivery --------------------------------------------------------------------------------


def _fill_stream(procs: Procs, folder: Path, n: int, env: dict[str, str]) -> None:
    """`n` events into the stream through a relay with delivery off (no configuration file, so
    no Maskinporten settings). Its upstream settings are the defaults, as in the stand-in's
    relay.toml, so both relays derive the same consumer settings (ack_wait, max_ack_pending)."""
    spool = folder / f"filler-{new_run_tag()}"
    filler = procs.relay(spool, env=env)
    filler.start()
    t, run = producer_template(), new_run_tag()
    try:
        for start in range(0, n, 1000):
            ids = range(start, min(n, start + 1000))
            body = b"\n".join(t.body(message_id(run, 3, k)) for k in ids) + b"\n"
            request = urllib.request.Request(
                f"{filler.url}/api/status", body, {"Content-Type": "application/x-ndjson"}
            )
            with urllib.request.urlopen(request, timeout=120) as r:
                answer = orjson.loads(r.read())
            if answer.get("accepted") != len(ids):
                raise RuntimeError(f"filling the stream: {answer}")
    finally:
        filler.stop()
        shutil.rmtree(spool, ignore_errors=True)


def _jetstream_round(procs: Procs, up: StandIn, folder: Path, n: int, cluster: NatsCluster) -> dict:
    env = cluster.relay_env()
    _fill_stream(procs, folder, n, env)
    up.reset()
    spool = folder / f"spool-{new_run_tag()}"
    relay = procs.relay(spool, config=up.config, env={**up.env, **env})
    try:
        relay.start()
        cpu = _cpu(cluster, sender=relay.pid, upstream=up.pid)
        result = up.wait(n, _timeout(n), relay)
        result.update(cpu.done())
        result["nats_cpu"] = _nats_cpu(result, cluster)
    finally:
        relay.stop()
        shutil.rmtree(spool, ignore_errors=True)
    return result


def delivery(ctx: Ctx) -> list[Row]:
    """3j: draining a backlog over RSocket, one event per request, 128 in flight, to the
    stand-in in ack-only mode, as row 3 (timed at the stand-in, first ack to last)."""
    n, rounds = ctx.pick((20_000, 2), (100_000, 3))
    folder = ctx.workdir("jetstream-delivery")
    with Procs(folder) as procs:
        stand_in = StandIn(procs)
        cluster = procs.nats_cluster().start()
        backlog = build_spool(folder / "backlog", n, new_run_tag())
        got: dict[str, list[dict]] = {name: [] for name in BACKENDS}
        for i in range(rounds):
            for name in _order(i):
                if name == "jetstream":
                    r = _jetstream_round(procs, stand_in, folder, n, cluster)
                else:
                    r = relay_round(procs, stand_in, backlog, n, {})
                got[name].append(r)
                log(f"delivery {name} → stand-in: {r['events_per_s']:,.0f} events/s")
    for r in got["sqlite"]:
        r.setdefault("nats_cpu", 0.0)  # the cluster idles in the sqlite rounds
    return [
        _row(
            "3j",
            "delivery, RSocket, 1 event/request → stand-in, jetstream R3 vs sqlite",
            got,
            {"backlog": n, "max_in_flight": 128},
            "sender_cpu",
        )
    ]
