"""What the end-to-end tests of the jetstream spool backend share: the relay's settings for a
NATS cluster, the stream's state as seen by a nats-py client, the rsocket-js status server as a
subprocess, and a producer that retries every batch until a relay acknowledges it."""

from __future__ import annotations

import asyncio
import importlib.util
import selectors
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.helpers.nats import NatsCluster, NatsNode, require_nats_server
from tests.helpers.processes import RelayProcess
from tests.helpers.waiting import eventually, wait_until

NODE_DIR = Path(__file__).resolve().parents[1] / "node"


def jetstream_backend_missing() -> str | None:
    """Why the jetstream backend cannot be tested here (not written yet), or None."""
    if importlib.util.find_spec("nats") is None:
        return "nats-py is not installed (`pip install -e .[test]`)"
    if importlib.util.find_spec("relay.spool.jetstream.spool") is None:
        return "relay.spool.jetstream.spool is not there yet (issue 12's backend)"
    from relay.config.model import SpoolConfig

    if "jetstream" not in SpoolConfig.__dataclass_fields__:
        return "the config has no [spool.jetstream] section yet (issue 12)"
    return None


def require_jetstream() -> None:
    """Skip, saying why, unless the backend, its config and a nats-server >= 2.11 are here."""
    why = jetstream_backend_missing()
    if why is not None:
        pytest.skip(why)
    require_nats_server()


def node_peer_missing() -> str | None:
    """Why the rsocket-js status server cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (NODE_DIR / "node_modules").is_dir():
        return "tests/node/node_modules is absent: run `npm ci --prefix tests/node`"
    return None


def jetstream_env(
    cluster: NatsCluster,
    stream: str = "RELAY_STATUS",
    consumer: str = "relay-delivery",
    replicas: int = 3,
) -> dict[str, str]:
    """The environment that puts a relay's spool on `cluster`'s stream (as an operator would)."""
    return {
        "RELAY_SPOOL__BACKEND": "jetstream",
        "RELAY_SPOOL__JETSTREAM__SERVERS": ",".join(cluster.urls),
        "RELAY_SPOOL__JETSTREAM__STREAM": stream,
        "RELAY_SPOOL__JETSTREAM__SUBJECT": f"relay.{stream.lower()}",
        "RELAY_SPOOL__JETSTREAM__CONSUMER": consumer,
        "RELAY_SPOOL__JETSTREAM__REPLICAS": str(replicas),
    }


# -- the stream as a nats-py client sees it ---------------------------------------------------


async def stream_info(urls: Sequence[str], stream: str, timeout: float = 30.0):
    """`StreamInfo` of `stream`, retried (a node may be down, a leader being elected) until
    `timeout`; the last error says why it never came."""
    import nats

    got: list = []
    errors: list[str] = []

    async def ask() -> bool:
        nc = None
        try:
            nc = await nats.connect(servers=list(urls), connect_timeout=2, allow_reconnect=False)
            got.append(await nc.jetstream(timeout=3).stream_info(stream))
            return True
        except Exception as exc:  # noqa: BLE001 - every failure is a reason to ask again
            errors.append(f"{type(exc).__name__}: {exc}")
            return False
        finally:
            if nc is not None:
                await nc.close()

    await eventually(ask, timeout, f"stream info of {stream}", lambda: "; ".join(errors[-3:]))
    return got[-1]


async def stream_leader(urls: Sequence[str], stream: str, timeout: float = 30.0) -> str:
    """The server name of the node that leads `stream`'s replicas now."""
    found: list[str] = []

    async def leader() -> bool:
        info = await stream_info(urls, stream, timeout)
        if info.cluster is not None and info.cluster.leader:
            found.append(info.cluster.leader)
            return True
        return False

    await eventually(leader, timeout, f"a leader of stream {stream}")
    return found[-1]


async def kill_stream_leader(cluster: NatsCluster, stream: str) -> NatsNode:
    """SIGKILL the node leading `stream`; it stays dead until restarted."""
    name = await stream_leader(cluster.urls, stream)
    node = cluster.node(name)
    node.kill()
    return node


# -- the rsocket-js status server --------------------------------------------------------------


class NodePeer:
    """tests/node/status-server.js (rsocket-js, written by no one here) as a subprocess: the
    status service, checking each request's token against the Maskinporten stand-in's JWKS and
    appending every event it acknowledges to `out` before acknowledging it."""

    def __init__(self, jwks_url: str, out: Path, log: Path) -> None:
        self.out = out
        self.log = log
        self.args = [
            shutil.which("node") or "node",
            str(NODE_DIR / "status-server.js"),
            "--port",
            "0",
            "--jwks-url",
            jwks_url,
            "--scope",
            "eformidling:dpo",
            "--out",
            str(out),
        ]
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self, timeout: float = 30.0) -> NodePeer:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=log, text=True)
        lines: list[str] = []
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)

            def listening() -> bool:
                if selector.select(timeout=0):
                    lines.append(self.proc.stdout.readline())
                    if lines[-1].startswith("LISTENING"):
                        return True
                if self.proc.poll() is not None:
                    raise RuntimeError(f"status-server.js exited:\n{self.diagnostics()}")
                return False

            wait_until(listening, timeout, "status-server.js to listen", self.diagnostics)
        self.port = int(lines[-1].split()[1])
        return self

    def records(self) -> list[dict]:
        lines = self.out.read_bytes().splitlines() if self.out.exists() else []
        # a line being appended as we read has no newline yet: skip it, it comes next time
        return [orjson.loads(line) for line in lines if line.endswith(b"}")]

    def received(self) -> Counter[str]:
        """message_id -> copies the peer acknowledged."""
        return Counter(r["event"]["message_id"] for r in self.records() if "event" in r)

    def diagnostics(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- producers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One HTTP request of a producer: where, how many events, when (monotonic), what came."""

    relay: int
    events: int
    sent: float
    answered: float
    status: int  # 0: no answer (refused, reset, timed out)
    body: bytes = b""


@dataclass
class Ledger:
    acked: set[str] = field(default_factory=set)  # message_ids some relay answered 200 for
    answers: list[Answer] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)  # 200s that did not account for a batch

    def statuses(self) -> Counter[int]:
        return Counter(a.status for a in self.answers)


def batches(events: list[dict], sizes: Sequence[int]) -> list[list[dict]]:
    """`events` cut into batches whose sizes cycle through `sizes` (1: a single JSON POST)."""
    out, i, k = [], 0, 0
    while i < len(events):
        n = sizes[k % len(sizes)]
        out.append(events[i : i + n])
        i, k = i + n, k + 1
    return out


async def produce(
    relays: Sequence[RelayProcess],
    work: list[list[dict]],
    ledger: Ledger,
    *,
    concurrency: int = 4,
    rate: float = float("inf"),
    timeout: float = 15.0,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Send every batch of `work`, the n-th to relay n mod len(relays), at about `rate` events/s
    in all; a batch that is not answered 200 goes again (to the next relay) until it is. Only
    then are its events acknowledged. Returns when all are, or when `stop()` says so."""
    queue: asyncio.Queue[tuple[int, list[dict]]] = asyncio.Queue()
    for n, batch in enumerate(work):
        queue.put_nowait((n, batch))
    started = time.monotonic()
    sent_events = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal sent_events
        while not queue.empty() and not stop():
            n, batch = queue.get_nowait()
            target = n % len(relays)
            while not stop():
                if await _send(session, relays, target, batch, ledger, timeout):
                    break
                target = (target + 1) % len(relays)
                await asyncio.sleep(0.05)  # a refused or dead relay: the next one, soon
            sent_events += len(batch)
            ahead = sent_events / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)  # keeping to the rate

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))


async def _send(
    session: aiohttp.ClientSession,
    relays: Sequence[RelayProcess],
    target: int,
    batch: list[dict],
    ledger: Ledger,
    timeout: float,
) -> bool:
    relay = relays[target]
    if len(batch) == 1:
        body, ctype = orjson.dumps(batch[0]), "application/json"
    else:
        body, ctype = b"\n".join(orjson.dumps(e) for e in batch), "application/x-ndjson"
    sent = time.monotonic()
    status, answer = 0, b""
    try:
        async with session.post(
            relay.url + "/api/status", data=body, headers={"Content-Type": ctype}
        ) as r:
            status, answer = r.status, await r.read()
    except (aiohttp.ClientError, TimeoutError, ConnectionError, OSError):
        pass
    ledger.answers.append(Answer(target, len(batch), sent, time.monotonic(), status, answer))
    if status != 200:
        return False
    got = orjson.loads(answer)
    stored = got.get("accepted", 0) + got.get("duplicates", 0)
    if stored != len(batch) or got.get("errors"):
        ledger.anomalies.append(f"{len(batch)} events answered {answer[:200]!r}")
    ledger.acked.update(e["message_id"] for e in batch)
    return True


__all__ = [
    "Answer",
    "Ledger",
    "NatsCluster",
    "NodePeer",
    "batches",
    "jetstream_backend_missing",
    "jetstream_env",
    "kill_stream_leader",
    "node_peer_missing",
    "produce",
    "require_jetstream",
    "stream_info",
    "stream_leader",
]
