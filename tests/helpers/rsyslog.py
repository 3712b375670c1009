"""Debian's rsyslogd for the RELP tests: unprivileged, in the foreground, with its own work
directory, pid file and config, taking lines on an imtcp port and forwarding them with one of the
shipped deploy/rsyslog files (their target, port and certificate paths changed)."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.helpers.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "rsyslog"
RSYSLOGD = "/usr/sbin/rsyslogd"


def omrelp_missing() -> str | None:
    """Why the rsyslog RELP tests cannot run here, or None."""
    if not os.access(RSYSLOGD, os.X_OK):
        return f"{RSYSLOGD} is not installed (Debian/Ubuntu: apt-get install rsyslog rsyslog-relp)"
    if not glob.glob("/usr/lib/*/rsyslog/omrelp.so") and not glob.glob(
        "/usr/lib/rsyslog/omrelp.so"
    ):
        return (
            "rsyslog's omrelp module is not installed (Debian/Ubuntu: apt-get install rsyslog-relp)"
        )
    return None


def require_omrelp() -> None:
    reason = omrelp_missing()
    if reason:
        pytest.skip(reason)


def shipped(name: str, **replace: str) -> str:
    """A shipped config with `old=new` replacements; each old text must occur in it."""
    text = (DEPLOY / name).read_text()
    for old, new in replace.items():
        assert old in text, f"{old!r} is not in deploy/rsyslog/{name}"
        text = text.replace(old, new)
    return text


class Rsyslogd:
    def __init__(self, work: Path, forwarding: str) -> None:
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        (work / "relay.conf").write_text(forwarding)
        self.port_file = work / "input.port"
        self.conf = work / "rsyslog.conf"
        self.conf.write_text(
            f'global(workDirectory="{work}")\n'
            'module(load="imtcp")\n'
            'input(type="imtcp" address="127.0.0.1" port="0" '
            f'listenPortFileName="{self.port_file}")\n'
            f'include(file="{work / "relay.conf"}")\n'
        )
        self.log = work / "rsyslogd.log"
        self.proc: subprocess.Popen | None = None
        self.input: socket.socket | None = None

    def check(self) -> subprocess.CompletedProcess:
        """`rsyslogd -N1`: validate the configuration."""
        return subprocess.run(
            [RSYSLOGD, "-N1", "-f", str(self.conf)], capture_output=True, text=True, timeout=30
        )

    def start(self) -> Rsyslogd:
        """Start (or start again, with the same work directory and queue files)."""
        self.port_file.unlink(missing_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.work / "rsyslogd.pid")],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )

        def listening() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"rsyslogd exited:\n{self.output()}")
            return self.port_file.exists() and bool(self.port_file.read_text().strip())

        wait_until(listening, 20, "rsyslogd to listen", self.output)
        self.input = socket.create_connection(("127.0.0.1", int(self.port_file.read_text())))
        return self

    def send(self, lines: list[bytes]) -> None:
        """Each line as a message tagged eformidling-status."""
        assert self.input is not None
        self.input.sendall(
            b"".join(b"<13>May  1 10:00:00 producer eformidling-status: %s\n" % m for m in lines)
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def said(self, text: str) -> bool:
        """Whether rsyslog's own messages (on stderr in the foreground) include `text`."""
        return text in self.output()

    def stop(self) -> None:
        if self.input is not None:
            self.input.close()
            self.input = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def have(tool: str) -> bool:
    return shutil.which(tool) is not None
