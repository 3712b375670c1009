"""A spool on a real, tiny filesystem: a full disk is a 503, never an ack, and the relay recovers
by itself when space returns. Needs permission to mount a tmpfs; skipped (and says so) otherwise."""

from __future__ import annotations

import sqlite3
import subprocess
import urllib.request
from pathlib import Path

import orjson
import pytest

from tests.helpers import RelayProcess, make_event, post, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def tiny_fs(tmp_path: Path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def readyz(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_full_disk_refuses_then_recovers(tiny_fs: Path) -> None:
    filler = tiny_fs / "filler"
    relay = RelayProcess(tiny_fs / "spool").start()
    try:
        filler.write_bytes(b"\0" * (1200 * 1024))
        acked: list[str] = []
        status = 200
        for _ in range(5000):
            event = make_event(description="z" * 800)
            status, _ = post(relay.url, event)
            if status != 200:
                break
            acked.append(event["message_id"])
        assert status == 503
        assert readyz(relay.url) == 503
        filler.unlink()
        wait_until(
            lambda: readyz(relay.url) == 200,
            15,
            "the relay ready again once the disk has room",
            relay.output,
            interval=0.2,
        )
        event = make_event()
        assert post(relay.url, event)[0] == 200
        acked.append(event["message_id"])
        # refused by the free-space reserve, or by a write that failed: either way, no ack
        assert "filesystem" in relay.output() or "spool write failed" in relay.output()
    finally:
        relay.kill()
    conn = sqlite3.connect(tiny_fs / "spool" / "spool.db")
    stored = {orjson.loads(b)["message_id"] for (b,) in conn.execute("SELECT body FROM events")}
    conn.close()
    assert set(acked) <= stored
