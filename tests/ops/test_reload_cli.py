"""`relay reload` and the pid file: every way it cannot reach the relay is one line on stderr,
and the pid file `relay run` keeps belongs to it alone."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.cli import main
from relay.cli.reload import pid_file
from relay.errors import UserError
from tests.helpers import wait_until


def _relay_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["reload", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("relay: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.fixture
def looks_like_a_relay() -> Iterator[subprocess.Popen]:
    """A process whose command line names the relay (what `relay reload` checks), which ends
    on SIGHUP like any program without a handler for it."""
    code = "import time; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code, "relay", "run"])
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    # until the exec, the child still shows the test's own command line
    wait_until(lambda: b"relay" in cmdline.read_bytes(), 10, "the child to exec")
    yield proc
    proc.kill()
    proc.wait()


def test_without_a_pid_file_it_says_how_to_give_one(capsys, tmp_path: Path) -> None:
    err = _relay_error(capsys)
    assert "--pid-file" in err and "lifecycle.pid_file" in err and "systemctl reload" in err
    config = tmp_path / "relay.toml"
    config.write_text("[lifecycle]\n")
    assert "no pid file" in _relay_error(capsys, "--config", str(config))


def test_a_missing_or_garbled_pid_file(capsys, tmp_path: Path) -> None:
    missing = tmp_path / "relay.pid"
    assert "does not exist" in _relay_error(capsys, "--pid-file", str(missing))
    config = tmp_path / "relay.toml"
    config.write_text(f'[lifecycle]\npid_file = "{missing}"\n')
    assert str(missing) in _relay_error(capsys, "--config", str(config))
    missing.write_text("twelve\n")
    assert "does not hold a process id" in _relay_error(capsys, "--pid-file", str(missing))


def test_a_stale_pid_file_is_refused_and_nothing_is_signalled(capsys, tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    pidfile = tmp_path / "relay.pid"
    pidfile.write_text(f"{gone.pid}\n")
    assert f"no process {gone.pid} is running" in _relay_error(capsys, "--pid-file", str(pidfile))
    # a number taken by another program since: SIGHUP would end it, so it is not sent
    other = subprocess.Popen(["sleep", "60"])
    try:
        pidfile.write_text(f"{other.pid}\n")
        assert "is not a relay" in _relay_error(capsys, "--pid-file", str(pidfile))
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_a_broken_file_is_reported_before_anything_is_sent(
    capsys, tmp_path: Path, looks_like_a_relay: subprocess.Popen
) -> None:
    pidfile = tmp_path / "relay.pid"
    pidfile.write_text(f"{looks_like_a_relay.pid}\n")
    config = tmp_path / "relay.toml"
    config.write_text(f'[lifecycle]\npid_file = "{pidfile}"\n[log]\nlevel = "loud"\n')
    assert "log.level" in _relay_error(capsys, "--config", str(config))
    assert looks_like_a_relay.poll() is None  # not signalled


def test_it_signals_the_relay_named_in_the_pid_file(
    capsys, tmp_path: Path, looks_like_a_relay: subprocess.Popen
) -> None:
    pidfile = tmp_path / "relay.pid"
    pidfile.write_text(f"{looks_like_a_relay.pid}\n")
    assert main(["reload", "--pid-file", str(pidfile)]) == 0
    assert f"pid {looks_like_a_relay.pid}" in capsys.readouterr().out
    assert looks_like_a_relay.wait(timeout=10) == -signal.SIGHUP


def test_no_permission_to_signal_is_one_line(looks_like_a_relay: subprocess.Popen) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run `relay reload` as another user")
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run(
        [*nobody, sys.executable, "-c", "import relay"], capture_output=True, timeout=30
    )
    if probe.returncode != 0:
        # a checkout in a private folder (`mktemp -d` makes it 0700) is closed to other users
        pytest.skip("another user cannot import this checkout's relay (a private folder?)")
    shared = Path(tempfile.mkdtemp())
    try:
        shared.chmod(0o755)
        pidfile = shared / "relay.pid"
        pidfile.write_text(f"{looks_like_a_relay.pid}\n")
        pidfile.chmod(0o644)
        command = [*nobody, sys.executable, "-m", "relay", "reload", "--pid-file", str(pidfile)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    finally:
        shutil.rmtree(shared)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("relay: error: not allowed to signal process")
    assert done.stderr.count("\n") == 1
    assert looks_like_a_relay.poll() is None


def test_the_pid_file_is_ours_while_running_and_gone_after(tmp_path: Path) -> None:
    path = tmp_path / "run" / "relay.pid"
    path.parent.mkdir()
    with pid_file(str(path)):
        assert path.read_text() == f"{os.getpid()}\n"
    assert not path.exists()
    # a stale file (no such process) is taken over
    path.write_text("999999999\n")
    with pid_file(str(path)):
        assert path.read_text() == f"{os.getpid()}\n"
    with (
        pytest.raises(UserError, match="cannot write lifecycle.pid_file"),
        pid_file(str(tmp_path / "no-such-dir" / "relay.pid")),
    ):
        pass


def test_a_second_relay_does_not_take_the_pid_file_of_a_running_one(
    tmp_path: Path, looks_like_a_relay: subprocess.Popen
) -> None:
    path = tmp_path / "relay.pid"
    path.write_text(f"{looks_like_a_relay.pid}\n")
    match = f"another relay \\(pid {looks_like_a_relay.pid}\\)"
    with pytest.raises(UserError, match=match), pid_file(str(path)):
        pass
    assert path.read_text() == f"{looks_like_a_relay.pid}\n"
