"""The `relay` command as a user meets it: one-line errors, exit codes. The checks that need no
running relay call `relay.cli.main` in this process; those marked e2e run real subprocesses."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from relay.cli import main
from relay.spool import Incoming, SqliteSpool
from tests.helpers import SEED_EVENT, RelayProcess, post


def relay(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=30,
    )


def test_check_config_example_file() -> None:
    result = relay("check-config", "--config", "relay.example.toml")
    assert result.returncode == 0, result.stderr
    assert "[spool]" in result.stdout


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """`relay ARGS` run by `relay.cli.main` here, with `env` added to the environment for that
    call: (exit code, stdout, stderr). `relay run` sets up logging on the root logger; what it
    changes there is put back afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    quiet = {name: logging.getLogger(name).level for name in ("aiohttp.access", "pyrsocket")}

    def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        with monkeypatch.context() as patch:  # `env` for this call only
            for name, value in (env or {}).items():
                patch.setenv(name, value)
            code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    root.handlers[:], level = saved
    root.setLevel(level)
    for name, level in quiet.items():
        logging.getLogger(name).setLevel(level)


def _assert_one_line_user_error(code: int, stderr: str) -> None:
    assert code == 2, stderr
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("relay: error: "), stderr


def test_user_errors_are_one_line_in_process(tmp_path: Path, in_process) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[upstream]\nhots = "x"\n')
    code, _, err = in_process("check-config", "--config", str(bad))
    _assert_one_line_user_error(code, err)
    assert "upstream.hots" in err
    code, _, err = in_process("check-config", "--config", str(tmp_path / "missing.toml"))
    _assert_one_line_user_error(code, err)
    code, _, err = in_process("check-config", env={"RELAY_SPOOL__MAX_BYTES": "lots"})
    _assert_one_line_user_error(code, err)
    assert "spool.max_bytes" in err
    code, _, err = in_process(
        "run",
        env={
            "RELAY_INGEST__HTTP__AUTH_TOKEN_FILE": str(tmp_path / "nope"),
            "RELAY_INGEST__HTTP__LISTEN": "127.0.0.1:0",
            "RELAY_SPOOL__PATH": str(tmp_path / "spool"),
        },
    )
    _assert_one_line_user_error(code, err)
    assert "ingest.http.auth_token_file" in err
    assert not (tmp_path / "spool").exists()  # refused before the spool was opened


def _fill_spool(path: Path, count: int) -> None:
    async def fill() -> None:
        spool = await SqliteSpool.open(path, max_bytes=1 << 30, dedup_window=0)
        await spool.append(
            [Incoming(b'{"n":%d,"pad":"%s"}' % (i, b"x" * 200), "t") for i in range(count)]
        )
        await spool.close()

    asyncio.run(fill())


def _break_pages(db: Path) -> None:
    data = bytearray(db.read_bytes())
    for offset in range(4096 * 5, 4096 * 40, 4096):
        data[offset + 100 : offset + 400] = b"\xff" * 300
    db.write_bytes(bytes(data))


def test_spool_check_and_stats_in_process(tmp_path: Path, in_process) -> None:
    _fill_spool(tmp_path / "spool", 2000)
    env = {"RELAY_SPOOL__PATH": str(tmp_path / "spool")}
    code, out, err = in_process("spool", "check", env=env)
    assert code == 0, err
    assert "sound" in out
    code, out, err = in_process("spool", "stats", "--json", env=env)
    assert code == 0, err
    stats = orjson.loads(out)
    assert stats["depth"] == 2000
    assert stats["sources"] == {"t": {"events": 2000, "bytes": stats["bytes"], "dead_letters": 0}}
    _break_pages(tmp_path / "spool" / "spool.db")
    code, out, err = in_process("spool", "check", env=env)
    assert code == 1, (out, err)
    assert err.strip() and "Traceback" not in err


@pytest.mark.e2e
def test_user_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[upstream]\nhots = "x"\n')
    cases = [
        relay("check-config", "--config", str(bad)),
        relay("check-config", "--config", str(tmp_path / "missing.toml")),
        relay("check-config", env={"RELAY_SPOOL__MAX_BYTES": "lots"}),
        relay(
            "run",
            env={
                "RELAY_INGEST__HTTP__AUTH_TOKEN_FILE": str(tmp_path / "nope"),
                "RELAY_SPOOL__PATH": str(tmp_path / "spool"),
            },
        ),
    ]
    for result in cases:
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith("relay: error: ")
    assert "upstream.hots" in cases[0].stderr


@pytest.mark.e2e
def test_spool_stats_after_kill(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    proc = RelayProcess(spool).start()
    try:
        assert post(proc.url, SEED_EVENT)[0] == 200
        status, body = post(proc.url, dict(SEED_EVENT, sender="971203420"))
        assert (status, body) == (400, b"Sender field (971203420) is not valid ISO6523 format.")
        proc.kill()
        proc.start()
        env = {"RELAY_SPOOL__PATH": str(spool)}
        result = relay("spool", "stats", "--json", env=env)
        assert result.returncode == 0, result.stderr
        stats = orjson.loads(result.stdout)
        assert stats["depth"] == 1
        assert stats["oldest_age_seconds"] >= 0
        text = relay("spool", "stats", env=env)
        assert "depth" in text.stdout
    finally:
        proc.kill()


@pytest.mark.e2e
def test_sigterm_exits_cleanly(tmp_path: Path) -> None:
    proc = RelayProcess(tmp_path / "spool").start()
    assert post(proc.url, SEED_EVENT)[0] == 200
    assert proc.stop() == 0
    assert "Traceback" not in proc.output()


@pytest.mark.e2e
def test_spool_check_sound_and_corrupt(tmp_path: Path) -> None:
    _fill_spool(tmp_path / "spool", 2000)
    env = {"RELAY_SPOOL__PATH": str(tmp_path / "spool")}
    sound = relay("spool", "check", env=env)
    assert sound.returncode == 0, sound.stderr
    assert "sound" in sound.stdout
    stats = orjson.loads(relay("spool", "stats", "--json", env=env).stdout)
    assert stats["sources"] == {"t": {"events": 2000, "bytes": stats["bytes"], "dead_letters": 0}}

    _break_pages(tmp_path / "spool" / "spool.db")
    broken = relay("spool", "check", env=env)
    assert broken.returncode == 1
    assert broken.stderr.strip() and "Traceback" not in broken.stderr


@pytest.mark.e2e
def test_status_command(tmp_path: Path) -> None:
    proc = RelayProcess(tmp_path / "spool").start()
    try:
        result = relay("status", "--url", proc.url)
        # no Maskinporten credentials: delivery is off, which /status reports as degraded
        assert result.returncode == 1
        assert "status: DEGRADED" in result.stdout
        assert "delivery is off" in result.stdout
        raw = relay("status", "--url", proc.url, "--json")
        assert orjson.loads(raw.stdout)["status"] == "degraded"
    finally:
        proc.kill()
    gone = relay("status", "--url", proc.url)
    assert gone.returncode == 2 and "is the relay running" in gone.stderr


@pytest.mark.e2e
def test_json_logs_have_stable_keys(tmp_path: Path) -> None:
    proc = RelayProcess(tmp_path / "spool", env={"RELAY_LOG__FORMAT": "json"}).start()
    assert proc.stop() == 0
    lines = [line for line in proc.output().splitlines() if line.strip()]
    assert len(lines) >= 3
    for line in lines:
        entry = orjson.loads(line)
        assert {"ts", "level", "logger", "message"} <= set(entry)
    assert any("relay ready" in orjson.loads(line)["message"] for line in lines)
