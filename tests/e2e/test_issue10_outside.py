"""Issue 10's acceptance list, tried from outside: a relay subprocess and peers on real sockets.

Each component has its own tests; these check the promise the way an operator would see it, with
default limits unless a test names one (and then only to keep the test short).
"""

from __future__ import annotations

import gzip
import http.client
import socket
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest

from tests.helpers import RelayProcess, make_event, spool_stats, wait_until

pytestmark = pytest.mark.e2e


def post(
    relay: RelayProcess, body: bytes, headers: dict[str, str] | None = None, timeout: float = 30
) -> tuple[int, bytes]:
    req = urllib.request.Request(
        relay.url + "/api/status",
        data=body,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def readyz(relay: RelayProcess) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(relay.url + "/readyz", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# --------------------------------------------------------------------------- 2. redirects


class _Redirecting(BaseHTTPRequestHandler):
    """Redirects every POST to /landing, which answers 200 to anything (as a GET would get)."""

    posts = 0
    others = 0

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        type(self).posts += 1
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(302)
        self.send_header("Location", "/landing")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        type(self).others += 1
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def test_upstream_redirecting_every_post_keeps_every_event(upstream_factory, relay_factory):
    up = upstream_factory()  # for its Maskinporten stand-in
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/api/status"
        relay = relay_factory(
            config=up.config,
            env={
                "RELAY_UPSTREAM__TRANSPORT": "http",
                "RELAY_UPSTREAM__HTTP_URL": url,
                "RELAY_RETRY__INITIAL_BACKOFF": "50ms",
                "RELAY_RETRY__MAX_BACKOFF": "1s",
            },
        ).start()
        body = b"\n".join(orjson.dumps(make_event()) for _ in range(20))
        status, _ = post(relay, body, {"Content-Type": "application/x-ndjson"})
        assert status == 200
        wait_until(lambda: _Redirecting.posts >= 3, 30, "the relay to try the upstream")
        wait_until(lambda: readyz(relay)[0] == 503, 10, "/readyz to report the redirect")
        code, reason = readyz(relay)
        assert "/landing" in reason and "302" in reason, reason
        stats = spool_stats(relay)
        assert stats["depth"] == 20 and stats["dead_letters"] == 0, stats
        assert _Redirecting.others == 0, "the relay followed a redirect"
    finally:
        server.shutdown()


# --------------------------------------------------------------------------- 4. hostile input


def test_two_gzip_members_are_two_events_or_refused(relay_factory) -> None:
    relay = relay_factory().start()
    a, b = make_event(), make_event()
    body = gzip.compress(orjson.dumps(a) + b"\n") + gzip.compress(orjson.dumps(b) + b"\n")
    status, answer = post(
        relay, body, {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"}
    )
    if status == 200:
        assert orjson.loads(answer)["accepted"] == 2, answer
        wait_until(lambda: spool_stats(relay)["depth"] == 2, 10, "both events stored")
    else:
        assert 400 <= status < 500, (status, answer)
        assert spool_stats(relay)["depth"] == 0


def test_truncated_object_is_400(relay_factory) -> None:
    relay = relay_factory().start()
    # pretty-printed, as a person or a logging library writes it: many lines, none a whole object
    # a list field puts a bare JSON value ("b") on a line of its own: no line sniffing may
    # turn what is left into "events"
    text = orjson.dumps({"labels": ["a", "b"], **make_event()}, option=orjson.OPT_INDENT_2)
    status, answer = post(relay, text[: text.index(b'"b"') + 20])
    assert status == 400, (status, answer)
    stats = spool_stats(relay)
    assert stats["depth"] == 0 and stats["dead_letters"] == 0, stats


def _vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_item_bomb_is_cheap_and_health_answers_meanwhile(relay_factory) -> None:
    relay = relay_factory().start()
    before = _vm_hwm_mib(relay.proc.pid)
    bomb = gzip.compress(b"{}\n" * 3_000_000)  # 9 MB of tiny lines in about 10 KB
    assert len(bomb) < 100_000
    slowest = [0.0]
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            started = time.monotonic()
            with urllib.request.urlopen(relay.url + "/healthz", timeout=10) as r:
                assert r.status == 200
            slowest[0] = max(slowest[0], time.monotonic() - started)
            time.sleep(0.02)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    started = time.monotonic()
    status, answer = post(
        relay, bomb, {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"}
    )
    took = time.monotonic() - started
    done.set()
    prober.join(15)
    assert 400 <= status < 500, (status, answer[:200])
    assert len(answer) < 16_384, len(answer)
    assert took < 10, took
    assert slowest[0] < 1.0, f"/healthz took {slowest[0]:.2f} s during the bomb"
    stats = spool_stats(relay)
    assert stats["depth"] == 0 and stats["dead_letters"] < 1000, stats
    assert _vm_hwm_mib(relay.proc.pid) - before < 300, "memory not bounded"


def test_stalled_connections_close_while_producers_are_served(relay_factory) -> None:
    relay = relay_factory(env={"RELAY_INGEST__HTTP__READ_TIMEOUT": "2s"}).start()
    stalled: list[socket.socket] = []
    try:
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
            s.sendall(
                b"POST /api/status HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100000\r\n\r\n{"sta'
            )
            stalled.append(s)
        opened = time.monotonic()
        # a normal producer is served at once, not after the stalled ones
        started = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=10)
        conn.request(
            "POST",
            "/api/status",
            orjson.dumps(make_event()),
            {"Content-Type": "application/json"},
        )
        assert conn.getresponse().status == 200
        assert time.monotonic() - started < 1.0
        conn.close()
        # every stalled connection is answered (408) or closed soon after read_timeout
        closed = 0
        for s in stalled:
            s.settimeout(max(0.1, opened + 10 - time.monotonic()))
            try:
                data = s.recv(4096)
                while data and b"\r\n" not in data:
                    data += s.recv(4096)
                closed += 1
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed += 1
        assert closed == len(stalled), f"only {closed} of {len(stalled)} stalled closed"
    finally:
        for s in stalled:
            s.close()


# --------------------------------------------------------------------------- 5. no hammering


@pytest.mark.parametrize(
    "fault",
    [
        {"refuse_tokens_text": "Failed to validate the token"},
        {"refuse_tokens_text": "Access Denied"},
        {"reject_code": "REJECTED", "reject_fraction": 1.0},
        {"reject_code": "INVALID", "reject_fraction": 1.0},
    ],
    ids=["bad-token", "access-denied", "rejected", "invalid"],
)
def test_refusing_everything_is_met_at_the_backoffs_pace(
    fault: dict, upstream_factory, relay_factory
) -> None:
    up = upstream_factory()
    up.faults(**fault)
    relay = relay_factory(
        config=up.config,
        env={"RELAY_RETRY__INITIAL_BACKOFF": "100ms", "RELAY_RETRY__MAX_BACKOFF": "1s"},
    ).start()
    body = b"\n".join(orjson.dumps(make_event()) for _ in range(2000))
    assert post(relay, body, {"Content-Type": "application/x-ndjson"})[0] == 200

    def requests() -> int:
        return up.stats()["rsocket"]["requests"]

    wait_until(lambda: requests() > 0, 20, "the relay to try")
    time.sleep(3)  # settle: what was in flight when the refusals began has come back
    start, began = requests(), time.monotonic()
    time.sleep(5)
    rate = (requests() - start) / (time.monotonic() - began)
    # one probe at a time, at most one per backoff interval once it has grown to max_backoff
    # (1 s): a handful per second at most, where an unpaced relay sends thousands
    assert rate <= 5, f"{rate:.1f} requests/s against an upstream refusing everything"
    stats = spool_stats(relay)
    assert stats["depth"] == 2000 and stats["dead_letters"] == 0, stats
    up.faults(refuse_tokens_text="", reject_fraction=0.0)
    wait_until(lambda: up.stats()["total"] >= 2000, 60, "delivery once the refusals stop")
