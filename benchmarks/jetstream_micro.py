"""What the NATS cluster of rows 1j-3j can do without the relay: publishes with PubAck to a
file-stored stream of one event's size, with nats-py, on a fresh three-node cluster on loopback
(`sync_interval: always`, benchmarks/natscluster.py).

    .venv/bin/python -m benchmarks.jetstream_micro [--n 3000] [--rounds 3]

For each of R1 and R3 streams (work-queue retention, as the relay's): messages per second with
one publish at a time (each waits for its PubAck: a round trip and, with `always`, an fsync on
a quorum), and with 100 and 1 000 in flight (as a relay's group of concurrent appends); then,
on R3, fetch + acknowledged ack (`ack_sync`) of what was published, 128 at a time. Medians of
the rounds. The ceiling the relay's jetstream rows are under on this machine;
benchmarks/README.md has the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import nats
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from benchmarks.events import stored_bodies
from benchmarks.procs import Procs


async def _publish(js, subject: str, bodies: list[bytes], in_flight: int) -> float:
    t0 = time.monotonic()
    for start in range(0, len(bodies), in_flight):
        await asyncio.gather(*(js.publish(subject, b) for b in bodies[start : start + in_flight]))
    return len(bodies) / (time.monotonic() - t0)


async def _drain(js, subject: str, stream: str, n: int) -> float:
    sub = await js.pull_subscribe(subject, durable="micro", stream=stream)
    t0, done = time.monotonic(), 0
    while done < n:
        msgs = await sub.fetch(128, timeout=10)
        await asyncio.gather(*(m.ack_sync() for m in msgs))
        done += len(msgs)
    return n / (time.monotonic() - t0)


async def _measure(urls: list[str], n: int, rounds: int) -> dict[str, float]:
    nc = await nats.connect(servers=urls)
    js = nc.jetstream()
    got: dict[str, list[float]] = {}
    try:
        for replicas in (1, 3):
            for r in range(rounds):
                stream = f"MICRO_R{replicas}_{r}"
                subject = stream.lower()
                await js.add_stream(
                    StreamConfig(
                        name=stream,
                        subjects=[subject],
                        num_replicas=replicas,
                        storage=StorageType.FILE,
                        retention=RetentionPolicy.WORK_QUEUE,
                    )
                )
                bodies = stored_bodies(f"{replicas:02x}{r:06x}", n)
                for in_flight in (1, 100, 1000):
                    count = n // 10 if in_flight == 1 else n  # one at a time is slow
                    rate = await _publish(js, subject, bodies[:count], in_flight)
                    got.setdefault(f"R{replicas} publish, {in_flight} in flight", []).append(rate)
                if replicas == 3:
                    total = n + 2 * n // 10
                    rate = await _drain(js, subject, stream, total)
                    got.setdefault("R3 fetch 128 + ack_sync each", []).append(rate)
                await js.delete_stream(stream)
    finally:
        await nc.close()
    return {k: round(statistics.median(v)) for k, v in got.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=3000, help="messages per measurement")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    with Procs(Path(tempfile.mkdtemp(prefix="relay-js-micro-"))) as procs:
        cluster = procs.nats_cluster().start()
        figures = asyncio.run(_measure(cluster.urls, a.n, a.rounds))
    for what, rate in figures.items():
        print(f"{what:32} {f'{rate:,}'.replace(',', ' '):>8} messages/s")


if __name__ == "__main__":
    main()
