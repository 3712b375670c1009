"""A routine restart of the relay process does not lose what TCP senders already handed to the
kernel: SIGTERM drains open connections before the spool closes."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import orjson
import pytest

from tests.helpers import RelayProcess, make_event, spool_stats, wait_until

pytestmark = pytest.mark.e2e


def listening_port(relay: RelayProcess) -> int:
    def found() -> re.Match | None:
        return re.search(r"syslog: listening on tcp 127\.0\.0\.1:(\d+)", relay.output())

    wait_until(lambda: found() is not None, 10, "the syslog listener in the relay's log")
    return int(found()[1])


def test_sigterm_stores_every_frame_the_kernel_accepted(tmp_path: Path) -> None:
    relay = RelayProcess(
        tmp_path / "spool", env={"RELAY_INGEST__SYSLOG__TCP_LISTEN": "127.0.0.1:0"}
    ).start()
    try:
        port = listening_port(relay)
        events = [make_event() for _ in range(3000)]
        stream = b"".join(orjson.dumps(e) + b"\n" for e in events)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(stream)
            # every byte is in a kernel now; the relay has read only part of it
            assert relay.stop() == 0, relay.output()
        assert spool_stats(relay)["depth"] == len(events), relay.output()[-2000:]
    finally:
        relay.kill()
