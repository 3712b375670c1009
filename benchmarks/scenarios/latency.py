"""Scenario 6: end-to-end latency at half the sustainable rate (measured first, see
`sustainable_rate`), one event per POST from an open-loop producer, delivery over RSocket.

Measured from the moment the producer got its 200 (the relay has the event on disk) to the moment
the stand-in stored the event (just before it acknowledges it): the loadgen records its clock at
each 200 and the stand-in its clock at each store, on the same machine. The relay's own
relay_delivery_latency_seconds histogram (ingest commit → upstream ack, coarse buckets) is kept
in the details as a cross-check.
"""

from __future__ import annotations

import re
import subprocess
import time
import urllib.request
from pathlib import Path

import orjson

from benchmarks.context import Ctx, log
from benchmarks.events import SEED_EVENT, message_id, new_run_tag
from benchmarks.procs import PY, Procs
from benchmarks.report import Row, Target, median
from benchmarks.scenarios.ingest import push
from benchmarks.upstreams import StandIn


def _post_one(url: str) -> None:
    body = orjson.dumps(dict(SEED_EVENT, message_id=message_id(new_run_tag(), 9, 0)))
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()


def percentile(sorted_values: list[float], p: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(p * len(sorted_values)))]


def histogram(text: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts {upper bound: count} of a Prometheus histogram."""
    out = {}
    for le, value in re.findall(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', text, re.M):
        out[float(le)] = float(value)
    return out


def bucket_quantile(before: dict, after: dict, q: float) -> float | None:
    """The upper bound of the bucket holding quantile q of what was observed in between."""
    counts = {le: after[le] - before.get(le, 0.0) for le in sorted(after)}
    total = counts.get(float("inf"), 0.0)
    if not total:
        return None
    return next(le for le, c in counts.items() if c >= q * total)


def _warm(relay, received) -> None:
    """One event through, so the connection is up and the token fetched before measuring."""
    n = received.count()
    _post_one(relay.url + "/api/status")
    received.wait_for(n + 1, 60, relay)


def sustainable_rate(procs: Procs, stand_in: StandIn, spool: Path, seconds: float) -> float:
    """Events/s the stand-in acknowledges while producers push as hard as they can (64
    connections): ingest and delivery then compete in the relay as they would at capacity, so
    the relay can keep up with this rate."""
    relay = procs.relay(spool, config=stand_in.config)
    relay.start()
    received = stand_in.received()
    try:
        _warm(relay, received)
        n0, t0 = received.count(), time.monotonic()
        push(relay.url + "/api/status", seconds)
        return (received.count() - n0) / (time.monotonic() - t0)
    finally:
        received.close()
        relay.stop()


def window(relay, received, rate: float, seconds: float, out: Path) -> dict:
    """One open-loop window at `rate`: latencies (ms, sorted) of the events it got 200s for."""
    args = [PY, "-m", "benchmarks.loadgen", "--url", relay.url + "/api/status"]
    args += ["--rate", f"{rate:.1f}", "--duration", str(seconds), "--connections", "32"]
    args += ["--out", str(out)]
    n = received.count()
    subprocess.run(args, capture_output=True, timeout=seconds + 120, check=True)
    acked = [line.split() for line in out.read_text().splitlines()]
    received.wait_for(n + len(acked), 120, relay)
    arrivals = received.arrival_times()
    lat = sorted(1000 * (arrivals[mid] - float(t)) for mid, t in acked if mid in arrivals)
    return {
        "events": len(lat),
        "missing_upstream": len(acked) - len(lat),
        "p50_ms": round(percentile(lat, 0.5), 2),
        "p90_ms": round(percentile(lat, 0.9), 2),
        "p99_ms": round(percentile(lat, 0.99), 2),
        "max_ms": round(lat[-1], 2),
    }


def latency(ctx: Ctx) -> list[Row]:
    probe, seconds, rounds = ctx.pick((2.0, 4.0, 1), (5.0, 5.0, 3))
    folder = ctx.workdir("latency")
    with Procs(folder) as procs:
        stand_in = StandIn(
            procs, ack_only=False
        )  # the events' arrival times are read from its store
        sustainable = sustainable_rate(procs, stand_in, folder / "probe-spool", probe)
        rate = sustainable / 2
        log(f"sustainable {sustainable:,.0f} events/s; measuring latency at {rate:,.0f}/s")
        stand_in.reset()
        relay = procs.relay(folder / "spool", config=stand_in.config)
        relay.start()
        received = stand_in.received()
        _warm(relay, received)
        before = relay.metrics()
        windows = []
        for i in range(rounds):
            windows.append(window(relay, received, rate, seconds, folder / f"acked-{i}.txt"))
            log(f"latency at {rate:,.0f}/s: {windows[-1]}")
        received.close()
        after = relay.metrics()
    p50 = median([w["p50_ms"] for w in windows])
    p99 = median([w["p99_ms"] for w in windows])
    h0, h1 = (histogram(t, "relay_delivery_latency_seconds") for t in (before, after))
    c0, c1 = (histogram(t, "relay_spool_commit_seconds") for t in (before, after))
    return [
        Row(
            "6",
            f"end-to-end latency at {rate:,.0f} events/s (½ sustainable)".replace(",", " "),
            p99,
            "ms",
            figure_text=f"p50 {p50:.1f} ms / p99 {p99:.1f} ms",
            targets=[Target("<", 50, "ms")],
            note=f"relay's histogram (commit → ack): p50 ≤ {bucket_quantile(h0, h1, 0.5)} s, "
            f"p99 ≤ {bucket_quantile(h0, h1, 0.99)} s; "
            f"spool commit p99 ≤ {bucket_quantile(c0, c1, 0.99)} s",
            details={
                "measured": "producer's 200 → stand-in stored the event (its received_at); "
                "figures are medians over the windows",
                "rate": rate,
                "sustainable": sustainable,
                "sustainable_is": "stand-in acks/s while 64 producers push as fast as they can",
                "seconds_per_window": seconds,
                "windows": windows,
                "relay_histogram_bucket_p50_s": bucket_quantile(h0, h1, 0.5),
                "relay_histogram_bucket_p99_s": bucket_quantile(h0, h1, 0.99),
                "spool_commit_bucket_p50_s": bucket_quantile(c0, c1, 0.5),
                "spool_commit_bucket_p99_s": bucket_quantile(c0, c1, 0.99),
                "spool_commits": c1.get(float("inf"), 0) - c0.get(float("inf"), 0),
            },
        )
    ]
