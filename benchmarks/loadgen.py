"""A Python HTTP/1.1 load generator (used when wrk is absent, and for NDJSON and latency runs).

Raw asyncio protocols on keep-alive connections, with request bytes made by a join: several times
faster than an HTTP client library, so the generator is less likely to be what limits a run.

    python -m benchmarks.loadgen --url URL --connections 64 --duration 5 [--batch 1000]
    python -m benchmarks.loadgen --url URL --rate 2000 --duration 10 --out FILE   (open loop)

Prints one JSON object: requests, ok (200s), events acknowledged ("accepted"), duplicates,
seconds, request latency percentiles. With --out, also writes "message_id unix_time_of_200"
lines: the time each event's 200 arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from urllib.parse import urlsplit

import orjson

from benchmarks.events import new_run_tag, producer_template


class Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(self.buf[:end]).lower()
        at = head.find(b"content-length:")
        length = 0
        if at >= 0:
            eol = head.find(b"\r\n", at)
            length = int(head[at + 15 : eol if eol >= 0 else None])
        if len(self.buf) < end + 4 + length:
            return
        status = int(head[9:12])
        body = bytes(self.buf[end + 4 : end + 4 + length])
        del self.buf[: end + 4 + length]
        waiter, self.waiter = self.waiter, None
        waiter.set_result((status, body))

    async def request(self, data: bytes) -> tuple[int, bytes]:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


class Requests:
    """Request bytes for one stream: `batch` events per request, each with a new message_id."""

    def __init__(self, url: str, run: str, stream: int, batch: int) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.batch = batch
        ctype = "application/json" if batch == 1 else "application/x-ndjson"
        self.head = (
            f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {ctype}\r\n"
        ).encode()
        t = producer_template()
        # message_id = run-stream-line-8000-<request number>: only the request number varies,
        # so a body is the request number joined between fixed pieces
        lines = [t.head + f"{run}-{stream:04x}-{i:04x}-8000-".encode() for i in range(batch)]
        self.pieces = [lines[0]] + [t.tail + b"\n" + line for line in lines[1:]] + [t.tail]
        self.prefix = f"{run}-{stream:04x}-"
        self.n = 0

    def next(self) -> tuple[bytes, str]:
        """(request bytes, message_id of its first event)."""
        self.n += 1
        number = f"{self.n:012x}"
        body = number.encode().join(self.pieces)
        head = self.head + f"Content-Length: {len(body)}\r\n\r\n".encode()
        return head + body, f"{self.prefix}0000-8000-{number}"


def accepted(body: bytes, batch: int) -> tuple[int, int]:
    """(accepted, duplicates) from the relay's answer."""
    if batch == 1:
        return (0, 1) if b'"duplicates"' in body else (1, 0)
    answer = orjson.loads(body)
    return answer.get("accepted", 0), answer.get("duplicates", 0)


class Tally:
    def __init__(self) -> None:
        self.requests = self.ok = self.events = self.duplicates = 0
        self.latencies: list[float] = []
        self.acked: list[tuple[str, float]] = []
        self.errors: dict[str, int] = {}

    def count(self, status: int, body: bytes, batch: int, took: float) -> None:
        self.requests += 1
        self.latencies.append(took)
        if status == 200:
            self.ok += 1
            a, d = accepted(body, batch)
            self.events += a
            self.duplicates += d
        else:
            self.errors[str(status)] = self.errors.get(str(status), 0) + 1

    def summary(self, seconds: float) -> dict:
        lat = sorted(self.latencies)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 3) if lat else None

        return {
            "requests": self.requests,
            "ok": self.ok,
            "events": self.events,
            "duplicates": self.duplicates,
            "errors": self.errors,
            "seconds": round(seconds, 4),
            "events_per_s": round(self.events / seconds, 1) if seconds else 0.0,
            "latency_ms": {"p50": pct(0.5), "p99": pct(0.99)},
        }


async def _connect(url: str, n: int) -> list[Connection]:
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(n):
        _, conn = await loop.create_connection(Connection, parts.hostname, parts.port)
        conns.append(conn)
    return conns


async def closed_loop(
    url: str, connections: int, duration: float, batch: int, warmup: float, by_answer: bool = False
):
    """Each connection sends its next request as soon as the last one is answered; only the
    answers within the `duration` after `warmup` count: of requests sent within it too, or, with
    `by_answer`, whenever sent. The first undercounts by about one request per connection when
    a request takes a sizeable part of the duration (a 1 000-event NDJSON request that takes
    2 s, in 8 s): `by_answer` then counts what was acknowledged in the window."""
    run = new_run_tag()
    conns = await _connect(url, connections)
    tally = Tally()
    start = time.perf_counter() + warmup
    stop = start + duration

    async def worker(i: int, conn: Connection) -> None:
        reqs = Requests(url, run, i, batch)
        while True:
            data, _ = reqs.next()
            sent = time.perf_counter()
            status, body = await conn.request(data)
            now = time.perf_counter()
            if now > stop:
                return
            if sent >= start or (by_answer and now >= start):
                tally.count(status, body, batch, now - sent)

    await asyncio.gather(*(worker(i, c) for i, c in enumerate(conns)))
    return tally.summary(duration)


async def open_loop(url: str, connections: int, duration: float, rate: float):
    """Requests started at a fixed rate, whatever the answers do (up to `connections` at once);
    records when each event's 200 arrived."""
    run = new_run_tag()
    conns = await _connect(url, connections)
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for c in conns:
        idle.put_nowait(c)
    reqs = Requests(url, run, 0, 1)
    tally = Tally()
    total = int(rate * duration)
    tasks = set()

    async def send(conn: Connection, data: bytes, mid: str) -> None:
        sent = time.perf_counter()
        status, body = await conn.request(data)
        acked_at = time.time()
        tally.count(status, body, 1, time.perf_counter() - sent)
        if status == 200:
            tally.acked.append((mid, acked_at))
        idle.put_nowait(conn)

    start = time.perf_counter()
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        conn = await idle.get()
        task = asyncio.create_task(send(conn, *reqs.next()))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    result = tally.summary(time.perf_counter() - start)
    result["target_rate"] = rate
    return result, tally.acked


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--batch", type=int, default=1, help="events per request (NDJSON when > 1)")
    p.add_argument("--rate", type=float, help="open loop: requests per second")
    p.add_argument("--out", help="open loop: write 'message_id time_of_200' lines here")
    p.add_argument(
        "--by-answer", action="store_true", help="count answers in the window, whenever sent"
    )
    a = p.parse_args()
    if a.rate:
        result, acked = asyncio.run(open_loop(a.url, a.connections, a.duration, a.rate))
        if a.out:
            with open(a.out, "w") as f:
                f.writelines(f"{mid} {t!r}\n" for mid, t in acked)
    else:
        result = asyncio.run(
            closed_loop(a.url, a.connections, a.duration, a.batch, a.warmup, a.by_answer)
        )
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
