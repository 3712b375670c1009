"""The processes a chaos campaign plays with: the relay, the upstream stand-ins, a tiny tmpfs.

Both processes are real subprocesses (`python -m relay …`), so SIGKILL, SIGSTOP and SIGCONT mean
what they mean in production. Restarts keep the ports, the spool and the stand-ins' data folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

_HTTP = aiohttp.ClientTimeout(total=5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Upstream:
    """`relay dev-upstream`: Maskinporten and status-service stand-ins in one process."""

    def __init__(self, data: Path, log: Path, token_lifetime: float) -> None:
        self.data = data
        self.log = log
        self.token_lifetime = token_lifetime
        self.ports = {"rsocket": 0, "http": 0, "maskinporten": 0}
        self.proc: asyncio.subprocess.Process | None = None
        self.frozen = False
        # called with the status URL before each kill or stop: its counters die with it
        self.before_exit: Callable[[str], Awaitable[None]] | None = None

    @property
    def config(self) -> Path:
        return self.data / "relay.toml"

    @property
    def received_db(self) -> Path:
        return self.data / "received.db"

    @property
    def status_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    @property
    def maskinporten_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['maskinporten']}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, timeout: float = 30.0) -> None:
        """Start and wait for READY; a port still held by the killed process is retried."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await self._start_once(deadline)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def _start_once(self, deadline: float) -> None:
        args = [sys.executable, "-m", "relay", "dev-upstream", "--data", str(self.data)]
        args += ["--token-lifetime", str(self.token_lifetime)]
        for name, port in self.ports.items():
            args += [f"--{name}-port", str(port)]
        with open(self.log, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *args, stdout=subprocess.PIPE, stderr=log
            )
        self.frozen = False
        line = b""
        while not line.startswith(b"READY"):
            left = deadline - time.monotonic()
            line = await asyncio.wait_for(self.proc.stdout.readline(), max(0.1, left))
            if not line:
                await self.proc.wait()
                raise RuntimeError(f"dev-upstream exited with {self.proc.returncode}")
        fields = dict(part.split("=", 1) for part in line.decode().split()[1:])
        for name in self.ports:
            self.ports[name] = int(fields[name].rsplit(":", 1)[1])

    async def kill(self) -> None:
        if self.alive:
            if self.before_exit is not None:
                await self.before_exit(self.status_url)
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
        self.frozen = False

    def freeze(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        if self.alive and self.frozen:
            self.proc.send_signal(signal.SIGCONT)
        self.frozen = False

    async def stop(self) -> None:
        self.thaw()
        if self.alive:
            if self.before_exit is not None:
                await self.before_exit(self.status_url)
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                await self.kill()

    async def status_faults(self, **changes: object) -> None:
        await _post_json(self.status_url + "/admin/faults", changes)

    async def maskinporten_faults(self, **changes: object) -> None:
        await _post_json(self.maskinporten_url + "/admin/faults", changes)


class Relay:
    """`relay run` configured through the environment, on a fixed port across restarts."""

    def __init__(self, config: Path, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = config
        self.env = {**os.environ, "RELAY_INGEST__HTTP__LISTEN": f"127.0.0.1:{self.port}", **env}
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, timeout: float = 30.0) -> None:
        args = [sys.executable, "-m", "relay", "run", "--config", str(self.config)]
        with open(self.log, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *args, env=self.env, stdout=log, stderr=log
            )
        self.starts += 1
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
            while time.monotonic() < deadline:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"relay exited with {self.proc.returncode}; see {self.log}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(self.url + "/healthz") as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise RuntimeError(f"relay did not come up within {timeout:.0f} s; see {self.log}")

    async def kill(self) -> None:
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self) -> int:
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                await self.kill()
        return self.proc.returncode if self.proc else 0

    async def get(self, path: str) -> tuple[int, dict | None]:
        """(status, JSON body or None); status 0 when the relay does not answer."""
        try:
            async with (
                aiohttp.ClientSession(timeout=_HTTP) as session,
                session.get(self.url + path) as r,
            ):
                body = await r.read()
                with contextlib.suppress(orjson.JSONDecodeError):
                    return r.status, orjson.loads(body)
                return r.status, None
        except (aiohttp.ClientError, TimeoutError):
            return 0, None

    async def post_event(self, event: dict) -> int:
        """POST one event; the HTTP status, 0 when the relay does not answer."""
        try:
            async with (
                aiohttp.ClientSession(timeout=_HTTP) as session,
                session.post(
                    self.url + "/api/status",
                    data=orjson.dumps(event),
                    headers={"Content-Type": "application/json"},
                ) as r,
            ):
                await r.read()
                return r.status
        except (aiohttp.ClientError, TimeoutError):
            return 0

    async def cli(self, *args: str) -> subprocess.CompletedProcess:
        """`relay ARGS --config …` with the relay's environment (same spool)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "relay",
            *args,
            "--config",
            str(self.config),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await proc.communicate()
        return subprocess.CompletedProcess(args, proc.returncode, out, err)


@dataclass
class Rig:
    """The processes under test and where their data lives."""

    relay: Relay
    upstream: Upstream
    spool: Path
    filler: Path | None  # on the spool's own tmpfs; None when no tmpfs could be mounted
    syslog_port: int  # of `relay` (the others do not listen for syslog)
    # --backend jetstream: a second relay on the same stream, and the NATS cluster
    # (benchmarks.chaos_nats.Cluster) that holds it
    others: list[Relay] = field(default_factory=list)
    nats: Any = None
    relp_port: int = 0  # of `relay` (the others do not listen for RELP)

    @property
    def relays(self) -> list[Relay]:
        return [self.relay, *self.others]

    def spool_free_bytes(self) -> int | None:
        """Room inside the spool's files: free database pages (read as `relay spool stats`
        does) and the write-ahead log, whose space is reused once checkpointed."""
        try:
            conn = sqlite3.connect(f"file:{self.spool / 'spool.db'}?mode=ro", uri=True, timeout=2)
            try:
                pages = conn.execute("PRAGMA freelist_count").fetchone()[0]
                free = pages * conn.execute("PRAGMA page_size").fetchone()[0]
            finally:
                conn.close()
            return free + (self.spool / "spool.db-wal").stat().st_size
        except (sqlite3.Error, OSError):
            return None


def mount_tmpfs(path: Path, size: str) -> str | None:
    """Mount a tmpfs of `size` at `path`; None on success, else why not."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if result.returncode == 0 else (result.stderr.strip() or "mount failed")


def unmount(path: Path) -> None:
    result = subprocess.run(["umount", str(path)], capture_output=True, timeout=30)
    if result.returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


async def _post_json(url: str, payload: dict) -> None:
    async with (
        aiohttp.ClientSession(timeout=_HTTP) as session,
        session.post(url, data=orjson.dumps(payload)) as r,
    ):
        if r.status != 200:
            raise RuntimeError(f"POST {url} answered {r.status}: {await r.text()}")
