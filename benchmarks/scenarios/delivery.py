"""Scenarios 3-5: draining a backlog upstream, the relay against a bare rsocket-py client.

Each relay round starts a relay with delivery on over a copy of a prepared spool (the backlog,
made with the spool API); each baseline round runs benchmarks.baselines.rsocket_client with the
same bodies, in-flight bound and metadata. Rounds alternate. The upstream is the stand-in in
ack-only mode; see benchmarks/upstreams.py for what it checks and how the time is taken.

Row 4 sends JSON arrays, which the real service drops after acknowledging them; its stand-in
is switched to accept arrays (and the relay told so), and the row fails if anything was
dropped, so a figure is never made of events the stand-in only counted as dropped.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from pathlib import Path

import orjson

from benchmarks.context import CpuShare, Ctx, Lines, log
from benchmarks.events import new_run_tag
from benchmarks.procs import Procs, http_get
from benchmarks.report import Row, Target, median
from benchmarks.spoolgen import build_spool, copy_spool
from benchmarks.upstreams import StandIn


def _timeout(n: int) -> float:
    return 120 + n / 500


def relay_round(procs: Procs, up, backlog: Path, n: int, env: dict[str, str]) -> dict:
    up.reset()
    spool = copy_spool(backlog, backlog.parent / f"spool-{new_run_tag()}")
    relay = procs.relay(spool, config=up.config, env={**up.env, **env})
    try:
        relay.start()
        cpu = CpuShare(sender=relay.pid, upstream=up.pid)
        result = up.wait(n, _timeout(n), relay)
        result.update(cpu.done())
    finally:
        relay.stop()
        shutil.rmtree(spool, ignore_errors=True)
    return result


def bare_round(procs: Procs, up, folder: Path, n: int) -> dict:
    up.reset()
    token = folder / "token"
    token.write_text(up.token())
    args = ["--port", str(up.port), "--token-file", str(token), "--count", str(n)]
    client = procs.python(
        "benchmarks.baselines.rsocket_client", *args, "--run", new_run_tag(), log="bare.log"
    )
    lines = Lines(client.spawn(stdout=subprocess.PIPE).stdout)
    lines.next(60)  # SENDING
    cpu = CpuShare(sender=client.pid, upstream=up.pid)
    result = up.wait(n, _timeout(n), client)
    result.update(cpu.done())
    own = orjson.loads(lines.next(60))
    if own["errors"]:
        raise RuntimeError(f"the bare client had {own['errors']} failed requests")
    result["client"] = own
    return result


def compare(procs: Procs, up, folder: Path, backlog: Path, n: int, rounds: int) -> dict:
    got: dict[str, list[dict]] = {"relay": [], "bare": []}
    for i in range(rounds):
        for name in ("relay", "bare") if i % 2 == 0 else ("bare", "relay"):
            if name == "relay":
                r = relay_round(procs, up, backlog, n, {})
            else:
                r = bare_round(procs, up, folder, n)
            got[name].append(r)
            log(f"rsocket → {up.name} {name}: {r['events_per_s']:,.0f} events/s")
    return got


def bottleneck(rounds: list[dict], upstream: str, sender: str = "relay") -> str:
    """Who was busy: CPU shares of one core (medians over the rounds); "X-bound" when X used
    nearly a whole core, or most of one and at least 1.5 times the other's share."""
    cpu = {upstream: median([r["upstream_cpu"] for r in rounds])}
    cpu[sender] = median([r["sender_cpu"] for r in rounds])
    busiest, other = sorted(cpu, key=cpu.get, reverse=True)
    shares = f"CPU {upstream} {cpu[upstream]:.0%}, {sender} {cpu[sender]:.0%}"
    if cpu[busiest] >= 0.85 or (cpu[busiest] >= 0.6 and cpu[busiest] >= 1.5 * cpu[other]):
        return f"{busiest}-bound ({shares})"
    return shares


def _comparison_row(rid: str, what: str, got: dict, upstream: str, n: int) -> Row:
    return Row(
        rid,
        what,
        median([r["events_per_s"] for r in got["relay"]]),
        "events/s",
        baseline=median([r["events_per_s"] for r in got["bare"]]),
        baseline_what="bare rsocket-py client",
        targets=[Target("ratio>=", 0.8)],
        details={"backlog": n, "max_in_flight": 128, "rounds": got},
        note=f"relay runs: {bottleneck(got['relay'], upstream)}; "
        f"bare runs: {bottleneck(got['bare'], upstream, 'bare client')}",
    )


def rsocket_single(ctx: Ctx) -> list[Row]:
    """3: one event per request-response, relay against the bare client."""
    n, rounds = ctx.pick((20_000, 2), (200_000, 3))
    folder = ctx.workdir("delivery-rsocket")
    with Procs(folder) as procs:
        stand_in = StandIn(procs)
        backlog = build_spool(folder / "backlog", n, new_run_tag())
        got = compare(procs, stand_in, folder, backlog, n, rounds)
    return [
        _comparison_row("3", "delivery, RSocket, 1 event/request → stand-in", got, "stand-in", n)
    ]


def _relay_only(procs: Procs, up, backlog: Path, n: int, rounds: int, env: dict) -> list[dict]:
    got = []
    for _ in range(rounds):
        r = relay_round(procs, up, backlog, n, env)
        got.append(r)
        settings = " ".join(
            f"{k.removeprefix('RELAY_UPSTREAM__').lower()}={v}" for k, v in env.items()
        )
        log(f"{settings} → {up.name}: {r['events_per_s']:,.0f} events/s")
    return got


def _set_faults(stand_in: StandIn, changes: dict) -> None:
    url = stand_in.up.status_url + "/admin/faults"
    request = urllib.request.Request(url, orjson.dumps(changes), method="POST")
    with urllib.request.urlopen(request, timeout=10) as r:
        r.read()


def _check_nothing_dropped(stand_in: StandIn) -> None:
    stats = orjson.loads(http_get(stand_in.up.status_url + "/api/stats"))
    if stats["dropped"]:
        raise RuntimeError(f"the stand-in acknowledged and dropped {stats['dropped_by_reason']}")


def _relay_only_row(
    ctx: Ctx,
    row: str,
    scenario: str,
    sizes: tuple,
    env: dict,
    faults: dict | None = None,
    **row_args,
) -> list[Row]:
    """A delivery row measured for the relay alone (no baseline) against the stand-in."""
    n, rounds = ctx.pick(*sizes)
    folder = ctx.workdir(f"delivery-{row}")
    with Procs(folder) as procs:
        stand_in = StandIn(procs)
        if faults:
            _set_faults(stand_in, faults)
        backlog = build_spool(folder / "backlog", n, new_run_tag())
        got = _relay_only(procs, stand_in, backlog, n, rounds, env)
        _check_nothing_dropped(stand_in)
    return [
        Row(
            row,
            scenario,
            median([r["events_per_s"] for r in got]),
            "events/s",
            details={"backlog": n, "rounds": got},
            note=bottleneck(got, stand_in.name),
            **row_args,
        )
    ]


def rsocket_batch(ctx: Ctx) -> list[Row]:
    """4: batch_size 100 (a JSON array of 100 events per request)."""
    return _relay_only_row(
        ctx,
        "4",
        "delivery, RSocket, batch_size 100 → stand-in",
        ((100_000, 2), (500_000, 3)),
        {"RELAY_UPSTREAM__BATCH_SIZE": "100", "RELAY_UPSTREAM__ACCEPTS_ARRAYS": "true"},
        faults={"accept_arrays": True},  # what `relay dev-upstream --accept-arrays` sets
        targets=[Target(">=", 100_000, "events/s")],
    )


def http_single(ctx: Ctx) -> list[Row]:
    """5: transport http, one event per POST, to the stand-in's POST /api/status."""
    return _relay_only_row(
        ctx,
        "5",
        "delivery, HTTP, 1 event/request → stand-in",
        ((5_000, 1), (30_000, 2)),
        {"RELAY_UPSTREAM__TRANSPORT": "http"},
    )
