"""Scenarios 7 and 8: a large backlog at start-up, and memory while draining it."""

from __future__ import annotations

import threading
import time
import urllib.request

from benchmarks.context import Ctx, log
from benchmarks.events import message_id, new_run_tag, producer_template
from benchmarks.procs import Procs, rss_kib
from benchmarks.report import Row, Target, median
from benchmarks.spoolgen import build_spool
from benchmarks.upstreams import StandIn


def startup(ctx: Ctx) -> list[Row]:
    """7: spawn → first /readyz 200, with a backlog vs with an empty spool (delivery off, so
    the backlog stays as it is between rounds; the spool files are in the page cache)."""
    n, rounds = ctx.pick((100_000, 2), (1_000_000, 5))
    folder = ctx.workdir("startup")
    spools = {
        "empty": build_spool(folder / "empty", 0, new_run_tag()),
        "backlog": build_spool(folder / "backlog", n, new_run_tag()),
    }
    got: dict[str, list[float]] = {"empty": [], "backlog": []}
    with Procs(folder) as procs:
        for i in range(rounds):
            for name in ("backlog", "empty") if i % 2 == 0 else ("empty", "backlog"):
                relay = procs.relay(spools[name])
                got[name].append(round(relay.start(ready="/readyz"), 3))
                relay.stop()
    log(f"start-up: {got}")
    return [
        Row(
            "7",
            f"start-up to /readyz with {n:,} events queued".replace(",", " "),
            median(got["backlog"]),
            "s",
            baseline=median(got["empty"]),
            baseline_what="empty spool",
            targets=[Target("ratio<=", 1.5), Target("<", 2.0, "s")],
            details={"backlog": n, "rounds": got},
        )
    ]


class RssSampler:
    """VmRSS of a process every `every` seconds, in a thread."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.pid, self.every = pid, every
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(rss_kib(self.pid)["VmRSS"])
            self._stop.wait(self.every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _post_duplicate(url: str, run: str, n: int) -> bytes:
    """POST the backlog's newest event again: the relay answers only once its writer has read
    the dedup log back, and answers "duplicates" only if it holds that event's digest."""
    body = producer_template().body(message_id(run, 1, n - 1))
    req = urllib.request.Request(url + "/api/status", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return r.read()


def drain_memory(ctx: Ctx) -> list[Row]:
    """8: RSS of the relay draining a big backlog (one event per request, to the stand-in in
    ack-only mode) vs its RSS with the same backlog while the upstream is not there yet. Both
    with the digests of the backlog's events held, as after a restart within the dedup window
    (the backlog is written with a dedup log, and the relay proves it has read it back)."""
    n = ctx.pick(100_000, 1_000_000)
    folder = ctx.workdir("drain-memory")
    run = new_run_tag()
    backlog = build_spool(folder / "backlog", n, run)
    with Procs(folder) as procs:
        # started once for its ports, PKI and relay.toml, then stopped until the idle figure
        # is taken: the relay retries the token and the connection meanwhile
        stand_in = StandIn(procs)
        stand_in.stop()
        env = {"RELAY_RETRY__MAX_BACKOFF": "1s"}
        relay = procs.relay(backlog, config=stand_in.config, env=env)
        relay.start()
        answer = _post_duplicate(relay.url, run, n)
        if b'"duplicates"' not in answer:
            raise RuntimeError(f"the relay does not hold the backlog's digests: {answer!r}")
        with RssSampler(relay.pid) as idle:
            time.sleep(1.0)
        stand_in.restart()  # a new process: it counts from zero
        started = time.monotonic()
        with RssSampler(relay.pid) as draining:
            result = stand_in.wait(n, 300 + n / 1000, relay)
        seconds = time.monotonic() - started
        peak = rss_kib(relay.pid)["VmHWM"]
        relay.stop()
    mb = 1024
    log(f"drain: idle {median(idle.samples) / mb:.0f} MB, peak {peak / mb:.0f} MB")
    return [
        Row(
            "8",
            f"peak RSS draining {n:,} events".replace(",", " "),
            peak / mb,
            "MB",
            baseline=median(idle.samples) / mb,
            baseline_what="idle, same backlog",
            targets=[Target("<", 80, "MB")],
            note=f"drained at {result['events_per_s']:,.0f} events/s to the stand-in".replace(
                ",", " "
            ),
            details={
                "backlog": n,
                "peak_is": "VmHWM of the relay at the end of the drain",
                "digests_held": "the backlog's newest event, posted again, was a duplicate",
                "drain_sampled_peak_mb": max(draining.samples) / mb,
                "idle_mb": [s / mb for s in idle.samples],
                "drain_seconds": round(seconds, 1),
                "drain_events_per_s": result["events_per_s"],
                "rss_every_second_mb": [round(s / mb) for s in draining.samples[::10]],
            },
        )
    ]
