"""The whole relay process fed by util-linux `logger` over syslog TCP and UDP, and by JSON lines."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import orjson
import pytest

from tests.helpers import RelayProcess, make_event, spool_stats, wait_until

pytestmark = pytest.mark.e2e

LOGGER = shutil.which("logger")


def depth(relay: RelayProcess) -> int:
    return spool_stats(relay)["depth"]


def wait_depth(relay: RelayProcess, n: int) -> None:
    wait_until(lambda: depth(relay) == n, 15, f"{n} events in the spool")


@pytest.mark.skipif(LOGGER is None, reason="util-linux logger is not installed")
def test_logger_over_tcp_and_udp_lands_in_the_spool(tmp_path: Path) -> None:
    relay = RelayProcess(
        tmp_path / "spool",
        env={
            "RELAY_INGEST__SYSLOG__TCP_LISTEN": "127.0.0.1:0",
            "RELAY_INGEST__SYSLOG__UDP_LISTEN": "127.0.0.1:0",
            "RELAY_INGEST__JSON_LINES__TCP_LISTEN": "127.0.0.1:0",
        },
    ).start()
    tcp, udp = relay.listening("syslog tcp"), relay.listening("syslog udp")
    jl = relay.listening("json lines")
    try:
        for n, args in enumerate(
            (
                ["--tcp", "--octet-count", "-P", str(tcp)],
                ["--udp", "-P", str(udp)],
            ),
            start=1,
        ):
            body = orjson.dumps(make_event()).decode()
            subprocess.run(
                [LOGGER, *args, "-n", "127.0.0.1", "--size", "8192", body], check=True, timeout=10
            )
            wait_depth(relay, n)
        line = orjson.dumps({**make_event(), "@version": "1", "level": "INFO"}) + b"\n"
        with socket.create_connection(("127.0.0.1", jl)) as conn:
            conn.sendall(line)
        wait_depth(relay, 3)
        assert "syslog tcp" in relay.output() and "json lines" in relay.output()
    finally:
        relay.kill()
