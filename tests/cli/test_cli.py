"""The `relay` command as a user meets it: real subprocesses, one-line errors, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

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


def test_sigterm_exits_cleanly(tmp_path: Path) -> None:
    proc = RelayProcess(tmp_path / "spool").start()
    assert post(proc.url, SEED_EVENT)[0] == 200
    assert proc.stop() == 0
    assert "Traceback" not in proc.output()


def test_spool_check_sound_and_corrupt(tmp_path: Path) -> None:
    import asyncio

    from relay.spool import Incoming, SqliteSpool

    async def fill() -> None:
        spool = await SqliteSpool.open(tmp_path / "spool", max_bytes=1 << 30, dedup_window=0)
        await spool.append(
            [Incoming(b'{"n":%d,"pad":"%s"}' % (i, b"x" * 200), "t") for i in range(2000)]
        )
        await spool.close()

    asyncio.run(fill())
    env = {"RELAY_SPOOL__PATH": str(tmp_path / "spool")}
    sound = relay("spool", "check", env=env)
    assert sound.returncode == 0, sound.stderr
    assert "sound" in sound.stdout
    stats = orjson.loads(relay("spool", "stats", "--json", env=env).stdout)
    assert stats["sources"] == {"t": {"events": 2000, "bytes": stats["bytes"], "dead_letters": 0}}

    db = tmp_path / "spool" / "spool.db"
    data = bytearray(db.read_bytes())
    for offset in range(4096 * 5, 4096 * 40, 4096):
        data[offset + 100 : offset + 400] = b"\xff" * 300
    db.write_bytes(bytes(data))
    broken = relay("spool", "check", env=env)
    assert broken.returncode == 1
    assert broken.stderr.strip() and "Traceback" not in broken.stderr


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


def test_json_logs_have_stable_keys(tmp_path: Path) -> None:
    proc = RelayProcess(tmp_path / "spool", env={"RELAY_LOG__FORMAT": "json"}).start()
    assert proc.stop() == 0
    lines = [line for line in proc.output().splitlines() if line.strip()]
    assert len(lines) >= 3
    for line in lines:
        entry = orjson.loads(line)
        assert {"ts", "level", "logger", "message"} <= set(entry)
    assert any("relay ready" in orjson.loads(line)["message"] for line in lines)
