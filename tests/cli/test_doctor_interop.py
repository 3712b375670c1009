"""`relay doctor` against a status-service peer no one here wrote the RSocket side of: the
rsocket-js server in tests/node (Spring Security's texts, acknowledges and then drops an array),
verifying tokens from the Maskinporten stand-in. The probe request must be acknowledged and
dropped (no event recorded), and a wrong route named."""

from __future__ import annotations

import os
import selectors
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.helpers import wait_until
from tests.helpers.doctor import StandIns

NODE = shutil.which("node")
NODE_DIR = Path(__file__).resolve().parents[1] / "node"

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(NODE is None, reason="node is not installed"),
    pytest.mark.skipif(
        not (NODE_DIR / "node_modules").is_dir(),
        reason="tests/node/node_modules is absent: run `npm ci --prefix tests/node`",
    ),
]


@pytest.fixture
def node_peer(tmp_path: Path):
    """(stand-ins for Maskinporten, the Node peer's port, its events file)."""
    with StandIns(tmp_path / "upstream") as up:
        out = tmp_path / "events.jsonl"
        stderr = (tmp_path / "node.stderr").open("wb")
        proc = subprocess.Popen(
            [
                NODE,
                str(NODE_DIR / "status-server.js"),
                "--port",
                "0",
                "--out",
                str(out),
                "--jwks-url",
                f"{up.addresses.maskinporten_url}/jwk",
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        stderr.close()
        lines: list[str] = []
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(proc.stdout, selectors.EVENT_READ)

                def listening() -> bool:
                    if selector.select(timeout=0):
                        lines.append(proc.stdout.readline())
                    if proc.poll() is not None:
                        raise RuntimeError((tmp_path / "node.stderr").read_text())
                    return bool(lines) and lines[-1].startswith("LISTENING")

                wait_until(listening, 20, "the Node peer to listen", lambda: "".join(lines))
            yield up, int(lines[-1].split()[1]), out
        finally:
            proc.kill()
            proc.wait()


def doctor(config: Path, env: dict[str, str]) -> tuple[int, dict[tuple[str, str], dict]]:
    result = subprocess.run(
        [sys.executable, "-m", "relay", "doctor", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, {(c["hop"], c["check"]): c for c in orjson.loads(result.stdout)}


def test_doctor_against_rsocket_js(tmp_path: Path, node_peer) -> None:
    up, port, out = node_peer
    config = up.config(tmp_path / "relay.toml")
    code, lines = doctor(config, {"RELAY_UPSTREAM__PORT": str(port)})
    assert code == 0, lines
    assert lines[("upstream", "rsocket setup")]["state"] == "ok"
    assert lines[("upstream", "route and token")]["state"] == "ok", lines
    records = [orjson.loads(line) for line in out.read_text().splitlines()]
    assert not [r for r in records if "event" in r], records  # no status sent
    assert any("dropped" in r for r in records), records  # the probe, acked and dropped

    code, lines = doctor(
        config, {"RELAY_UPSTREAM__PORT": str(port), "RELAY_UPSTREAM__ROUTE": "log-fyre"}
    )
    assert code == 1
    line = lines[("upstream", "route and token")]
    assert line["state"] == "failed" and "No handler for destination" in line["detail"], line
