"""Supervision: a background task or thread that dies turns /healthz 503, and the relay stops in
order and exits non-zero, so that systemd or Kubernetes restarts it."""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from relay import supervision
from relay.config import Config, load_config
from relay.server import build_app, serve
from relay.spool import SqliteSpool
from relay.spool.sqlite.writer import Writer
from tests.helpers import eventually


def _healthz(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


async def _wait_for(predicate, timeout: float, what: str) -> None:
    """`predicate` blocks (it makes an HTTP request): it runs in a thread."""
    await eventually(lambda: asyncio.to_thread(predicate), timeout, what)


def _environ(tmp_path: Path) -> dict[str, str]:
    """The relay listens on a port the OS chooses: its "relay ready" line says which."""
    return {
        "RELAY_INGEST__HTTP__LISTEN": "127.0.0.1:0",
        "RELAY_SPOOL__PATH": str(tmp_path / "spool"),
    }


async def _ready_port(caplog: pytest.LogCaptureFixture) -> int:
    """The HTTP port of a relay serving in this process, from its "relay ready" line."""
    ready = re.compile(r"relay ready: http [^ ,;]*:(\d+)")
    found: list[re.Match] = []

    def said() -> bool:
        found[:] = [m for r in caplog.records if (m := ready.search(r.getMessage()))]
        return bool(found)

    await eventually(said, 20, "the relay ready line", lambda: caplog.text)
    return int(found[-1].group(1))


async def test_a_dying_task_stops_serve_in_order_with_a_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = asyncio.create_task(serve(load_config(None, environ=_environ(tmp_path))))
    url = f"http://127.0.0.1:{await _ready_port(caplog)}"
    await _wait_for(lambda: _healthz(url) == 200, 20, "the relay to come up")

    async def worker() -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("injected fault")

    supervision.watch(asyncio.create_task(worker()), "test worker")
    with pytest.raises(supervision.BackgroundFailure, match="test worker.*injected fault"):
        await asyncio.wait_for(server, 20)
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert any(level == "CRITICAL" and "'test worker'" in m for level, m in messages)
    phases = [m.split(":")[0] for _, m in messages if m.startswith("shutdown phase")]
    # no credentials configured, so no delivery to stop
    assert phases == ["shutdown phase 1/3", "shutdown phase 3/3"]
    assert _healthz(url) == 0  # the listener is closed
    assert supervision.failure() is None  # uninstalled: the next serve starts clean


async def test_healthz_is_503_with_the_reason_once_a_task_failed(tmp_path: Path) -> None:
    spool = await SqliteSpool.open(tmp_path / "spool", max_bytes=1 << 20, dedup_window=0)
    supervisor = supervision.Supervisor(asyncio.get_running_loop())
    supervision.install(supervisor)
    try:
        async with TestClient(TestServer(build_app(Config(), spool))) as client:
            assert (await client.get("/healthz")).status == 200
            supervision.report_failure("delivery worker 0", ValueError("bug"))
            await asyncio.wait_for(supervisor.wait(), 5)
            answer = await client.get("/healthz")
            assert answer.status == 503
            assert "delivery worker 0" in await answer.text()
    finally:
        supervision.uninstall()
        await spool.close()


# the spool writer thread dies before it serves anything (a fault injected into its start-up)
_DYING_WRITER = textwrap.dedent(
    """
    import sys
    from relay.spool.sqlite.writer import Writer
    from relay.cli import main

    def boom(self):
        raise MemoryError("injected into the spool writer")

    Writer._load_dedup = boom
    sys.exit(main(["run"]))
    """
)


# the thread dying with the exception is the point; pytest would warn of it
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_serve_fails_when_the_spool_writer_thread_dies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The in-process form of the test below: `serve` stops in order and says why."""
    caplog.set_level(logging.INFO)

    def boom(self) -> None:
        raise MemoryError("injected into the spool writer")

    monkeypatch.setattr(Writer, "_load_dedup", boom)
    with pytest.raises(supervision.BackgroundFailure) as failure:
        await asyncio.wait_for(serve(load_config(None, environ=_environ(tmp_path))), 30)
    assert failure.value.exit_code == supervision.EXIT_FAILURE
    assert "'spool writer' stopped unexpectedly: MemoryError" in caplog.text
    assert "shutdown phase 3/3: closing the spool" in caplog.text
    assert supervision.failure() is None


@pytest.mark.e2e  # the same as a `relay run` subprocess: its exit code and last line
def test_relay_run_exits_70_when_the_spool_writer_thread_dies(tmp_path: Path) -> None:
    env = {**_environ(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-c", _DYING_WRITER],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == supervision.EXIT_FAILURE, proc.stderr
    assert "'spool writer' stopped unexpectedly: MemoryError" in proc.stderr
    assert "shutdown phase 3/3: closing the spool" in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("relay: stopped after an internal failure:"), last
