"""Shared test helpers: real ports, real relay subprocesses, a valid example event."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

SEED_EVENT = {
    "conversation_id": "3233d263-30d0-4cd4-9e38-ff62a978d58e",
    "receiver_org_number": "991825827",
    "@timestamp": "2022-08-10T00:11:27.246Z",
    "service_identifier": "DPE",
    "sender": "0192:971203420",
    "status": "LEVERT",
    "orgnr": "971203420",
    "receiver": "0192:991825827",
    "message_id": "65f237bc-7d64-45cb-8f4d-3d81345b4668",
    "process_identifier": "urn:no:difi:profile:einnsyn:journalpost:ver1.0",
    "sender_org_number": "971203420",
    "document_identifier": "urn:no:difi:einnsyn:xsd::publisering",
}


def make_event(**overrides: object) -> dict:
    """A valid event with a fresh message_id (so it is never a duplicate of another)."""
    event = dict(SEED_EVENT, message_id=str(uuid.uuid4()))
    event.update(overrides)
    return event


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RelayProcess:
    """`python -m relay run` as a real subprocess, configured through environment variables."""

    def __init__(self, spool: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.spool = spool
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "RELAY_INGEST__HTTP__LISTEN": f"127.0.0.1:{self.port}",
            "RELAY_SPOOL__PATH": str(spool),
            **(env or {}),
        }
        self.proc: subprocess.Popen | None = None
        self.log = spool.parent / f"relay-{self.port}.log"

    def start(self, timeout: float = 20.0) -> RelayProcess:
        logf = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "run"], env=self.env, stdout=logf, stderr=logf
        )
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"relay did not come up:\n{self.output()}")

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


@pytest.fixture
def relay_factory(tmp_path: Path):
    started: list[RelayProcess] = []

    def factory(spool: Path | None = None, env: dict[str, str] | None = None) -> RelayProcess:
        relay = RelayProcess(spool or tmp_path / "spool", env)
        started.append(relay)
        return relay

    yield factory
    for relay in started:
        relay.kill()
