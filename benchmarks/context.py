"""What every scenario gets: quick or full, a working folder, the rows measured so far."""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from benchmarks.report import Row


@dataclass
class Ctx:
    quick: bool
    root: Path
    rows: dict[str, Row] = field(default_factory=dict)

    def pick(self, quick, full):
        return quick if self.quick else full

    def workdir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def log(message: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {message}", flush=True)


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


class CpuShare:
    """CPU used by some processes between construction and `done()`, as a share of one core."""

    def __init__(self, **pids: int) -> None:
        self.pids = pids
        self.t0 = time.monotonic()
        self.c0 = {name: cpu_seconds(pid) for name, pid in pids.items()}

    def done(self) -> dict[str, float]:
        dt = time.monotonic() - self.t0
        return {
            f"{name}_cpu": round((cpu_seconds(pid) - self.c0[name]) / dt, 2)
            for name, pid in self.pids.items()
        }


class Lines:
    """Lines of a child's stdout, read by a thread, so waiting for one can time out."""

    def __init__(self, stream: IO[str]) -> None:
        self._q: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._q.put(line)
        self._q.put("")

    def next(self, timeout: float) -> str:
        try:
            line = self._q.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"no output after {timeout} s") from None
        if not line:
            raise RuntimeError("the process ended")
        return line.strip()
