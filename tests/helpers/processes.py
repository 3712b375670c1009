"""Real processes for tests: `relay run` and `relay dev-upstream` as subprocesses, free ports,
and the small HTTP / CLI calls the end-to-end tests make against them."""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import orjson

from tests.helpers.waiting import wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# retries fast enough for a test to see several within seconds
FAST_RETRY = {"RELAY_RETRY__INITIAL_BACKOFF": "50ms", "RELAY_RETRY__MAX_BACKOFF": "1s"}

_READY = re.compile(r"relay ready: http [^ ,;]*:(\d+)")


class RelayProcess:
    """`python -m relay run` as a real subprocess, configured through environment variables."""

    def __init__(
        self,
        spool: Path,
        env: dict[str, str] | None = None,
        config: Path | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        """`command` replaces `python -m relay run [--config FILE]`, e.g. with a unit's
        ExecStart; the environment (RELAY_SPOOL__PATH, the listener on port 0) is the same."""
        self.config = config
        self.command = list(command) if command is not None else None
        self.spool = spool
        # The relay binds port 0 and says in its "relay ready" line which port it got: no race
        # between picking a free port here and binding it there. A restart keeps that port.
        self.port = 0
        self.env = {
            **os.environ,
            "RELAY_INGEST__HTTP__LISTEN": "127.0.0.1:0",
            "RELAY_SPOOL__PATH": str(spool),
            **(env or {}),
        }
        self.proc: subprocess.Popen | None = None
        RelayProcess._count += 1
        self.log = spool.parent / f"relay-{spool.name}-{RelayProcess._count}.log"

    _count = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> RelayProcess:
        logf = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        offset = logf.tell()
        args = [sys.executable, "-m", "relay", "run"]
        if self.config is not None:
            args += ["--config", str(self.config)]
        self.proc = subprocess.Popen(self.command or args, env=self.env, stdout=logf, stderr=logf)
        logf.close()

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited with {self.proc.returncode}:\n{self.output()}")
            if not self.port:
                found = _READY.search(self.log.read_bytes()[offset:].decode(errors="replace"))
                if not found:
                    return False
                self.port = int(found.group(1))
                self.env["RELAY_INGEST__HTTP__LISTEN"] = f"127.0.0.1:{self.port}"
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_until(up, timeout, "the relay to come up", self.output, interval=0.02)
        return self

    def listening(self, listener: str) -> int:
        """The port a listener ("syslog tcp", "syslog udp", "json lines") got, as the last
        "relay ready" line says: configure it with port 0 and read it back, race-free."""
        ready = [line for line in self.output().splitlines() if "relay ready:" in line]
        found = re.search(re.escape(listener) + r" [^ ,;]*:(\d+)", ready[-1]) if ready else None
        if not found:
            raise AssertionError(f"the relay does not say it listens for {listener}")
        return int(found.group(1))

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(timeout=20)
        return self.proc.returncode if self.proc else 0

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class UpstreamProcess:
    """`relay dev-upstream` as a real subprocess: the Maskinporten and status-service stand-ins.

    A restart keeps the ports and the PKI, so a running relay can reconnect to it."""

    def __init__(self, data: Path, token_lifetime: float = 120.0, args: Sequence[str] = ()) -> None:
        """`args`: further `relay dev-upstream` options, e.g. ("--host", "0.0.0.0")."""
        self.data = data
        self.token_lifetime = token_lifetime
        self.args = list(args)
        self.ports = {"rsocket": 0, "http": 0, "maskinporten": 0}
        self.proc: subprocess.Popen | None = None
        self.config = data / "relay.toml"

    def start(self, timeout: float = 30.0) -> UpstreamProcess:
        args = [sys.executable, "-m", "relay", "dev-upstream", "--data", str(self.data)]
        args += ["--token-lifetime", str(self.token_lifetime)]
        for name, port in self.ports.items():
            args += [f"--{name}-port", str(port)]
        args += self.args
        log = open(self.data.parent / f"upstream-{self.data.name}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True)
        log.close()
        lines: list[str] = []
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)

            def said_ready() -> bool:
                # READY is the first line it prints; reading only when there is something to
                # read, so that the timeout holds even if it never comes
                if selector.select(timeout=0):
                    lines.append(self.proc.stdout.readline())
                    if lines[-1].startswith("READY"):
                        return True
                if self.proc.poll() is not None:
                    raise RuntimeError(f"dev-upstream exited with {self.proc.returncode}")
                return False

            wait_until(said_ready, timeout, "dev-upstream to say READY", lambda: "".join(lines))
        line = lines[-1]
        fields = dict(part.split("=", 1) for part in line.split()[1:])
        self.ports["rsocket"] = int(fields["rsocket"].rsplit(":", 1)[1])
        self.ports["http"] = int(fields["http"].rsplit(":", 1)[1])
        self.ports["maskinporten"] = int(fields["maskinporten"].rsplit(":", 1)[1])
        self.status_url = fields["http"]
        self.maskinporten_url = fields["maskinporten"]
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def get(self, url: str):
        with urllib.request.urlopen(url, timeout=5) as r:
            return orjson.loads(r.read())

    def post(self, url: str, payload: dict):
        req = urllib.request.Request(url, data=orjson.dumps(payload), method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            return orjson.loads(r.read())

    def stats(self) -> dict:
        return self.get(self.status_url + "/api/stats")

    def statuses(self, limit: int = 100_000) -> list[dict]:
        return self.get(f"{self.status_url}/api/statuses?limit={limit}")

    def faults(self, **changes) -> dict:
        return self.post(self.status_url + "/admin/faults", changes)

    def maskinporten_faults(self, **changes) -> dict:
        return self.post(self.maskinporten_url + "/admin/faults", changes)

    def tokens_issued(self) -> int:
        return self.get(self.maskinporten_url + "/admin/stats")["issued"]


def spool_stats(relay: RelayProcess) -> dict:
    """`relay spool stats --json` against the relay's spool (as an operator would run it)."""
    out = subprocess.run(
        [sys.executable, "-m", "relay", "spool", "stats", "--json"],
        env=relay.env,
        capture_output=True,
        timeout=30,
    )
    return orjson.loads(out.stdout)


def send(relay: RelayProcess, events: list[dict]) -> None:
    """POST as NDJSON in chunks; raises unless every chunk is acknowledged."""
    for i in range(0, len(events), 500):
        body = b"\n".join(orjson.dumps(e) for e in events[i : i + 500])
        req = urllib.request.Request(
            relay.url + "/api/status", data=body, headers={"Content-Type": "application/x-ndjson"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert orjson.loads(r.read())["accepted"] == len(events[i : i + 500])


def post(url: str, event: dict) -> tuple[int, bytes]:
    """POST one event to a relay at `url`: (HTTP status, body), whatever the status."""
    req = urllib.request.Request(
        url + "/api/status", data=orjson.dumps(event), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def received_ids(up: UpstreamProcess) -> Counter[str]:
    return Counter(s["message_id"] for s in up.statuses())
