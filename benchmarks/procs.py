"""Real processes for the scenarios: the relay, the stand-ins, the baselines.

`Procs` is a context manager that kills whatever it started, whatever happens.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.natscluster import NatsCluster

PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str, timeout: float = 1.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def http_get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak so far) of a process, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


class Proc:
    """A child process with its output in a log file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args, self.log, self.env = args, log, env
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0

    def spawn(self, stdout: int | None = None) -> subprocess.Popen:
        with open(self.log, "ab") as logf:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(
                self.args, env=self.env, stdout=stdout or logf, stderr=logf, text=bool(stdout)
            )
        return self.proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self, what: str) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{what} exited with {self.proc.returncode}:\n{tail}")

    def stop(self, timeout: float = 30.0) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait()


class Relay(Proc):
    """`python -m relay run`, configured by environment variables (and a config file)."""

    def __init__(
        self, spool: Path, log: Path, env: dict[str, str] | None, config: Path | None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.spool = spool
        full_env = {
            # only the settings given here: none leak in from the caller's environment
            **{k: v for k, v in os.environ.items() if not k.startswith("RELAY_")},
            "RELAY_INGEST__HTTP__LISTEN": f"127.0.0.1:{self.port}",
            "RELAY_SPOOL__PATH": str(spool),
            "RELAY_LOG__LEVEL": "warning",
            **(env or {}),
        }
        args = [PY, "-m", "relay", "run"] + (["--config", str(config)] if config else [])
        super().__init__(args, log, full_env)

    def start(self, ready: str = "/healthz", timeout: float = 60.0) -> float:
        """Start; return the seconds from spawning to the first 200 of `ready`."""
        self.spawn()
        deadline = self.started_at + timeout
        while time.monotonic() < deadline:
            self.check_alive("relay")
            if http_status(self.url + ready) == 200:
                return time.monotonic() - self.started_at
            time.sleep(0.005)
        raise RuntimeError(f"relay not ready after {timeout} s; see {self.log}")

    def metrics(self) -> str:
        return http_get(self.url + "/metrics").decode()


class Upstream(Proc):
    """`relay dev-upstream`: Maskinporten and status-service stand-ins."""

    def __init__(self, data: Path, log: Path, ack_only: bool = False) -> None:
        self.data = data
        self.ack_only = ack_only
        self.ports = {"rsocket": 0, "http": 0, "maskinporten": 0}
        self.config = data / "relay.toml"
        self.db = data / "received.db"
        self.status_url = ""
        super().__init__([], log)

    def start(self, timeout: float = 60.0) -> Upstream:
        """Start, or start again on the same ports with the same PKI (a relay's configuration
        stays valid)."""
        self.args = [PY, "-m", "relay", "dev-upstream", "--data", str(self.data)]
        self.args += ["--token-lifetime", "3600"] + (["--ack-only"] if self.ack_only else [])
        for name, port in self.ports.items():
            self.args += [f"--{name}-port", str(port)]
        proc = self.spawn(stdout=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline and not line.startswith("READY"):
            line = proc.stdout.readline()
            if not line:
                self.check_alive("dev-upstream")
                time.sleep(0.05)
        fields = dict(part.split("=", 1) for part in line.split()[1:])
        for name in self.ports:
            self.ports[name] = int(fields[name].rsplit(":", 1)[1])
        self.status_url = fields["http"]
        return self

    def token(self) -> str:
        """A valid access token from the Maskinporten stand-in (via `relay token --raw`)."""
        out = subprocess.run(
            [PY, "-m", "relay", "token", "--raw", "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return out.stdout.strip().splitlines()[-1]

    def received(self, since: tuple[int, int] = (0, 0)) -> Received:
        return Received(self.db, since)


class Received:
    """Reads the stand-in's store directly (read-only), so watching it costs the stand-in
    nothing on its event loop. Counts only what arrived after `since` (a `mark()`)."""

    def __init__(self, db: Path, since: tuple[int, int] = (0, 0)) -> None:
        self._db = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        self._requests, self._events = since

    def mark(self) -> tuple[int, int]:
        """(last request id, last event id) so far."""
        last = "(SELECT coalesce(max(id), 0) FROM {})"
        query = f"SELECT {last.format('requests')}, {last.format('events')}"
        return tuple(self._db.execute(query).fetchone())

    def count(self) -> int:
        row = self._db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()
        return row[0] - self._events

    def wait_for(self, n: int, timeout: float, proc: Proc | None = None) -> None:
        deadline = time.monotonic() + timeout
        while self.count() < n:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the stand-in has {self.count()} of {n} events after {timeout}s"
                )
            if proc is not None:
                proc.check_alive("the sender")
            time.sleep(0.1)

    def rate(self) -> tuple[float, int]:
        """(events/s, events) between the first and the last request the stand-in stored:
        the events after the first request over the time from its arrival to the last one's."""
        rows = self._db.execute(
            "SELECT received_at, event_count FROM requests WHERE id IN"
            " ((SELECT min(id) FROM requests WHERE id > ?), (SELECT max(id) FROM requests))"
            " ORDER BY id",
            (self._requests,),
        ).fetchall()
        total = self._db.execute(
            "SELECT count(*) FROM events WHERE id > ?", (self._events,)
        ).fetchone()[0]
        first, last = _when(rows[0][0]), _when(rows[-1][0])
        return (total - rows[0][1]) / max(last - first, 1e-9), total

    def arrival_times(self) -> dict[str, float]:
        """message_id -> when the stand-in stored it (Unix time)."""
        rows = self._db.execute(
            "SELECT message_id, received_at FROM events WHERE id > ?", (self._events,)
        ).fetchall()
        return {mid: _when(at) for mid, at in rows}

    def close(self) -> None:
        self._db.close()


def _when(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


class Procs:
    """Starts processes in one working folder; kills all of them on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._started: list[Proc] = []

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *_: object) -> None:
        for p in reversed(self._started):
            p.kill()

    def _track(self, p: Proc) -> Proc:
        self._started.append(p)
        return p

    def relay(
        self, spool: Path, env: dict[str, str] | None = None, config: Path | None = None
    ) -> Relay:
        return self._track(Relay(spool, self.workdir / f"relay-{spool.name}.log", env, config))

    def upstream(self, name: str = "upstream", ack_only: bool = False) -> Upstream:
        log = self.workdir / f"{name}.log"
        return self._track(Upstream(self.workdir / name, log, ack_only))

    def nats_cluster(self, size: int = 3) -> NatsCluster:
        """A JetStream cluster on loopback (not started), its nodes killed on exit."""
        from benchmarks.natscluster import NatsCluster  # it builds on this module's Proc

        cluster = NatsCluster(self.workdir / "nats", size)
        for node in cluster.nodes:
            self._track(node)
        return cluster

    def python(self, module: str, *args: str, log: str) -> Proc:
        return self._track(Proc([PY, "-m", module, *args], self.workdir / log))
