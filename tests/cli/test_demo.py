"""`relay demo` (what `make run` runs): the printed curl line delivers an event end to end."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request

import orjson
import pytest

from tests.helpers import free_port, wait_until

pytestmark = pytest.mark.e2e


def test_demo_curl_line_delivers_end_to_end() -> None:
    # A port picked here, not 0: the demo prints the address it was given, and the curl line it
    # prints is what this test runs. (Another process may take the port in between; the demo
    # then exits at once, "cannot start the demo", and this test fails saying so.)
    listen = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "demo", "--listen", listen],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        lines: list[str] = []
        while not any("Waiting for events" in line for line in lines):
            line = proc.stdout.readline()
            assert line, "demo exited early"
            lines.append(line)
        text = "".join(lines)
        post = re.search(r"curl -s -H '[^']+' (\S+) -d '([^']+)'", text)
        query = re.search(r"curl -s '([^']+)'", text)
        assert post and query, text
        req = urllib.request.Request(
            post.group(1), data=post.group(2).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            assert orjson.loads(r.read()) == {"accepted": 1}
        received: list = []

        def delivered() -> bool:
            with urllib.request.urlopen(query.group(1), timeout=5) as r:
                received[:] = orjson.loads(r.read())
            return bool(received)

        wait_until(delivered, 20, "the event at the status service", text.strip, interval=0.2)
        assert received[0]["status"] == "LEVERT"
        # the stand-in acks over RSocket what it then drops: nothing may have been dropped
        stats_url = query.group(1).split("/api/statuses")[0] + "/api/stats"
        with urllib.request.urlopen(stats_url, timeout=5) as r:
            stats = orjson.loads(r.read())
        assert (stats["dropped"], stats["total"]) == (0, 1)
        assert "delivered: LEVERT" in proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
