"""The upstreams delivery is measured against, behind one face: `reset()` before a round,
`wait(n)` until n events are acknowledged, giving events/s timed at the upstream from its first
acknowledgement to its last (so start-up and connecting are left out, for relay and baseline
alike).

- StandIn: `relay dev-upstream`, the status-service stand-in: verifies every request's token,
  validates the event and commits it to SQLite before answering.
- Lean: benchmarks.ack_upstream, which only checks route, token presence and JSON, and counts.
  Tokens still come from the stand-in's Maskinporten.
"""

from __future__ import annotations

import subprocess
import time

import orjson

from benchmarks.context import Lines
from benchmarks.procs import Proc, Procs, free_port


class StandIn:
    name = "stand-in"

    def __init__(self, procs: Procs) -> None:
        self.up = procs.upstream().start()
        self.config = self.up.config
        self.env: dict[str, str] = {}
        self._since = (0, 0)
        self._token = ""

    @property
    def port(self) -> int:
        return self.up.ports["rsocket"]

    @property
    def pid(self) -> int:
        return self.up.pid

    def reset(self) -> None:
        """From now on only what arrives counts."""
        received = self.up.received()
        self._since = received.mark()
        received.close()

    def received(self):
        return self.up.received(self._since)

    def token(self) -> str:
        self._token = self._token or self.up.token()  # valid for an hour
        return self._token

    def wait(self, n: int, timeout: float, sender: Proc) -> dict:
        received = self.received()
        try:
            received.wait_for(n, timeout, sender)
            rate, total = received.rate()
        finally:
            received.close()
        return {"events_per_s": round(rate, 1), "events": total}


class Lean:
    name = "lean upstream"

    def __init__(self, procs: Procs, stand_in: StandIn, expect: int) -> None:
        self.stand_in = stand_in
        self.config = stand_in.config
        self.port = free_port()
        self.env = {"RELAY_UPSTREAM__PORT": str(self.port)}
        args = ["--port", str(self.port), "--expect", str(expect)]
        self.proc = procs.python("benchmarks.ack_upstream", *args, log="ack-upstream.log")
        self._lines: Lines | None = None

    def start(self) -> Lean:
        self._lines = Lines(self.proc.spawn(stdout=subprocess.PIPE).stdout)
        self._lines.next(30)  # READY
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def reset(self) -> None:
        pass  # it reports and starts counting afresh after every `expect` events

    def token(self) -> str:
        return self.stand_in.token()

    def wait(self, n: int, timeout: float, sender: Proc | None = None) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                r = orjson.loads(self._lines.next(1.0))
                break
            except RuntimeError:
                if sender is not None:
                    sender.check_alive("the sender")
                self.proc.check_alive("the lean upstream")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not {n} events acknowledged after {timeout} s") from None
        rate = (r["events"] - r["first_events"]) / max(r["last_at"] - r["first_at"], 1e-9)
        return {"events_per_s": round(rate, 1), "events": r["events"]}
