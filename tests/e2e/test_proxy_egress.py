"""Egress through a real HTTP proxy (Debian's tinyproxy): token fetch, HTTP delivery and RSocket
delivery, with the direct route blocked.

How "through the proxy" is proven: the stand-ins (`relay dev-upstream`, on 127.0.0.1) are reached
only through gates, a firewall's stand-in in this process: each gate listens on 127.0.0.2 and
forwards to one stand-in, but only connections whose source address is 127.0.0.3. tinyproxy is
told (`Bind 127.0.0.3`) to make its outgoing connections from that address, while the relay's own
connections to 127.0.0.2 come from 127.0.0.1. So an event reaches the stand-in only through the
proxy; a direct attempt is refused and counted (the tests assert none happened). tinyproxy's log
must also show each CONNECT / request line, and the proxy password must appear nowhere: not in
the relay's log, /status, /metrics or /readyz.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from rsocket.payload import Payload
from rsocket.request_handler import BaseRequestHandler
from rsocket.rsocket_server import RSocketServer
from rsocket.transports.tcp import TransportTCP

from relay.delivery.proxy import Proxy
from relay.delivery.rsocket.connection import RSocketConnection
from tests.helpers import FAST_RETRY, free_port, make_event, send, spool_stats, wait_until
from tests.helpers.tls import make_tls_pki

pytestmark = pytest.mark.e2e

TINYPROXY = "/usr/bin/tinyproxy"
PASSWORD = "pr0xy-s3cret-word"
PROXY_SOURCE = "127.0.0.3"  # tinyproxy's outgoing address: the only one the gates let in
GATE_HOST = "127.0.0.2"


class Gate:
    """Forwards GATE_HOST:port to a stand-in's port on 127.0.0.1, for PROXY_SOURCE only."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.accepted = 0
        self.refused: list[str] = []  # the source addresses refused

    async def start(self) -> None:
        server = await asyncio.start_server(self._serve, GATE_HOST, 0)
        self.port = server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        source = writer.get_extra_info("peername")[0]
        if source != PROXY_SOURCE:
            self.refused.append(source)
            writer.transport.abort()
            return
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError):
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


class Gates:
    """One gate per stand-in port, served by an event loop in a thread."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.by_name = {name: Gate(port) for name, port in ports.items()}
        for gate in self.by_name.values():
            asyncio.run_coroutine_threadsafe(gate.start(), self.loop).result(5)

    def __getitem__(self, name: str) -> Gate:
        return self.by_name[name]

    def refused(self) -> list[str]:
        return [source for gate in self.by_name.values() for source in gate.refused]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class Tinyproxy:
    """tinyproxy in the foreground on a free 127.0.0.1 port, with its own config and log."""

    def __init__(self, directory: Path, connect_ports: list[int], user: str | None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = directory / "tinyproxy.log"
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            f"Bind {PROXY_SOURCE}",
            "Timeout 60",
            f'LogFile "{self.log}"',
            "LogLevel Connect",
            "MaxClients 100",
            "Allow 127.0.0.1",
            *(f"ConnectPort {port}" for port in connect_ports),
        ]
        if user:
            lines.append(f"BasicAuth {user} {PASSWORD}")
        if os.geteuid() == 0:
            lines += ["User root", "Group root"]  # else it would drop to a user that cannot log
        self.conf = directory / "tinyproxy.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.output = directory / "tinyproxy.out"
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(
                [TINYPROXY, "-d", "-c", str(self.conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_until(self._listening, 10, "tinyproxy to listen", self.text)

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"tinyproxy exited with {self.proc.returncode}: {self.text()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def text(self) -> str:
        parts = [p.read_text(errors="replace") for p in (self.log, self.output) if p.exists()]
        return "\n".join(parts)

    def requests(self) -> list[str]:
        """The request lines tinyproxy logged ("CONNECT 127.0.0.2:123 HTTP/1.1", …)."""
        if not self.log.exists():
            return []
        return re.findall(r"Request \(file descriptor \d+\): (.*)", self.log.read_text())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def tinyproxy_factory(tmp_path: Path) -> Iterator:
    if not shutil.which(TINYPROXY):
        pytest.skip(f"{TINYPROXY} is not installed (apt-get install tinyproxy; .ci/run does)")
    started: list[Tinyproxy] = []

    def factory(connect_ports: list[int], user: str | None = None) -> Tinyproxy:
        proxy = Tinyproxy(tmp_path / f"tinyproxy-{len(started)}", connect_ports, user)
        started.append(proxy)
        return proxy

    yield factory
    for proxy in started:
        proxy.stop()


@pytest.fixture
def gated(upstream_factory) -> Iterator:
    """The stand-ins, and a gate in front of each that lets only the proxy in."""
    up = upstream_factory()
    gates = Gates(up.ports)
    yield up, gates
    gates.stop()


def _gated_targets(up, gates: Gates) -> dict[str, str]:
    """Relay settings that point every connection at the gates instead of the stand-ins."""
    return {
        "RELAY_UPSTREAM__HOST": GATE_HOST,
        "RELAY_UPSTREAM__PORT": str(gates["rsocket"].port),
        "RELAY_UPSTREAM__HTTP_URL": f"http://{GATE_HOST}:{gates['http'].port}/api/status",
        "RELAY_MASKINPORTEN__TOKEN_URL": f"http://{GATE_HOST}:{gates['maskinporten'].port}/token",
    }


def _no_proxy_environment() -> dict[str, str]:
    """The test runner's own proxy variables must not leak into the relay under test."""
    names = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    return {v: "" for name in names for v in (name, name.upper())}


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.read().decode()
    except urllib.error.HTTPError as e:
        return e.read().decode()


def _assert_password_nowhere(relay, password: str = PASSWORD) -> None:
    for page in ("/status", "/metrics", "/readyz"):
        assert password not in _get(relay.url + page), page
    assert password not in relay.output()


def _deliver(relay, up, count: int) -> None:
    events = [make_event() for _ in range(count)]
    send(relay, events)
    wait_until(lambda: up.stats()["total"] >= count, 30, "the events upstream", relay.output)
    wait_until(lambda: spool_stats(relay)["depth"] == 0, 10, "the spool to drain")


def test_rsocket_and_tokens_through_the_configured_proxy_with_basic_auth(
    gated, tinyproxy_factory, relay_factory, tmp_path: Path
) -> None:
    """upstream.proxy and maskinporten.proxy name the user; the password comes from a file."""
    up, gates = gated
    proxy = tinyproxy_factory([gates["rsocket"].port], user="relay")
    secret = tmp_path / "proxy-password"
    secret.write_text(PASSWORD + "\n")
    proxy_url = f"http://relay@127.0.0.1:{proxy.port}"
    env = {
        **FAST_RETRY,
        **_no_proxy_environment(),
        **_gated_targets(up, gates),
        "RELAY_UPSTREAM__TRANSPORT": "rsocket",
        "RELAY_UPSTREAM__PROXY": proxy_url,
        "RELAY_UPSTREAM__PROXY_PASSWORD_FILE": str(secret),
        "RELAY_MASKINPORTEN__PROXY": proxy_url,
        "RELAY_MASKINPORTEN__PROXY_PASSWORD_FILE": str(secret),
    }
    relay = relay_factory(config=up.config, env=env).start()
    _deliver(relay, up, 50)

    requests = proxy.requests()
    assert f"CONNECT {GATE_HOST}:{gates['rsocket'].port} HTTP/1.1" in requests
    token_request = f"POST http://{GATE_HOST}:{gates['maskinporten'].port}/token HTTP/1.1"
    assert token_request in requests
    assert gates["rsocket"].accepted >= 1 and gates["maskinporten"].accepted >= 1
    assert gates.refused() == []  # the relay never went around the proxy
    assert up.tokens_issued() >= 1
    log = relay.output()
    assert f"through the proxy http://relay:***@127.0.0.1:{proxy.port}" in log
    shown = orjson.loads(_get(relay.url + "/status"))["upstream"]["proxy"]
    assert shown == f"http://relay:***@127.0.0.1:{proxy.port}"
    _assert_password_nowhere(relay)


def test_http_delivery_through_the_environment_proxy(
    gated, tinyproxy_factory, relay_factory
) -> None:
    """HTTP_PROXY from the environment, with the user and password in its URL."""
    up, gates = gated
    proxy = tinyproxy_factory([], user="relay")
    env = {
        **FAST_RETRY,
        **_no_proxy_environment(),
        **_gated_targets(up, gates),
        "RELAY_UPSTREAM__TRANSPORT": "http",
        "HTTP_PROXY": f"http://relay:{PASSWORD}@127.0.0.1:{proxy.port}",
        "NO_PROXY": "status.example,10.0.0.0/8",  # names other hosts only
    }
    relay = relay_factory(config=up.config, env=env).start()
    _deliver(relay, up, 30)

    requests = proxy.requests()
    status_posts = [
        r
        for r in requests
        if r.startswith(f"POST http://{GATE_HOST}:{gates['http'].port}/api/status ")
    ]
    assert len(status_posts) >= 1
    assert any(
        r.startswith(f"POST http://{GATE_HOST}:{gates['maskinporten'].port}/token ")
        for r in requests
    )
    assert gates.refused() == []
    assert "from environment variable HTTP_PROXY" in relay.output()
    shown = orjson.loads(_get(relay.url + "/status"))["upstream"]["proxy"]
    assert shown == f"http://relay:***@127.0.0.1:{proxy.port}"
    _assert_password_nowhere(relay)


def test_no_proxy_sends_the_named_hosts_direct(
    upstream_factory, tinyproxy_factory, relay_factory
) -> None:
    """HTTPS_PROXY and HTTP_PROXY are set, but NO_PROXY names the stand-ins' address: nothing
    goes through the proxy (its log shows no request) and everything is delivered."""
    up = upstream_factory()
    proxy = tinyproxy_factory([up.ports["rsocket"]])
    env = {
        **FAST_RETRY,
        **_no_proxy_environment(),
        "RELAY_UPSTREAM__TRANSPORT": "rsocket",
        "HTTPS_PROXY": proxy.url,
        "HTTP_PROXY": proxy.url,
        "no_proxy": "localhost, 127.0.0.1",
    }
    relay = relay_factory(config=up.config, env=env).start()
    _deliver(relay, up, 20)
    assert proxy.requests() == []
    assert orjson.loads(_get(relay.url + "/status"))["upstream"]["proxy"] is None


def test_a_refused_connect_is_the_not_ready_reason(
    gated, tinyproxy_factory, relay_factory, tmp_path: Path
) -> None:
    """tinyproxy allows CONNECT to another port only: the relay says so on /readyz, naming the
    proxy (password masked) and its answer, and keeps the events."""
    up, gates = gated
    proxy = tinyproxy_factory([gates["rsocket"].port + 1], user="relay")
    env = {
        **FAST_RETRY,
        **_no_proxy_environment(),
        **_gated_targets(up, gates),
        "RELAY_UPSTREAM__TRANSPORT": "rsocket",
        "RELAY_UPSTREAM__PROXY": f"http://relay:{PASSWORD}@127.0.0.1:{proxy.port}",
        "RELAY_MASKINPORTEN__PROXY": f"http://relay:{PASSWORD}@127.0.0.1:{proxy.port}",
    }
    relay = relay_factory(config=up.config, env=env).start()
    send(relay, [make_event() for _ in range(5)])
    expected = (
        f"not ready: the proxy http://relay:***@127.0.0.1:{proxy.port} refused CONNECT "
        f"{GATE_HOST}:{gates['rsocket'].port}: 403"
    )
    wait_until(
        lambda: expected in _get(relay.url + "/readyz"), 20, "/readyz to say why", relay.output
    )
    assert spool_stats(relay)["depth"] == 5
    assert up.stats()["total"] == 0
    _assert_password_nowhere(relay)


@pytest.mark.parametrize(
    ("variable", "transport"), [("HTTPS_PROXY", "rsocket"), ("HTTP_PROXY", "http")]
)
def test_a_bad_proxy_variable_stops_the_start_in_one_line(
    upstream_factory, tmp_path: Path, variable: str, transport: str
) -> None:
    """The environment is not part of the configuration file, so `relay run` checks it (the
    stand-ins' URLs are http://, so HTTP_PROXY is the one for tokens and HTTP delivery)."""
    up = upstream_factory()
    env = {
        **os.environ,
        **_no_proxy_environment(),
        "RELAY_SPOOL__PATH": str(tmp_path / "spool"),
        "RELAY_INGEST__HTTP__LISTEN": "127.0.0.1:0",
        "RELAY_UPSTREAM__TRANSPORT": transport,
        variable: f"socks5://relay:{PASSWORD}@127.0.0.1:1080",
    }
    run = subprocess.run(
        [sys.executable, "-m", "relay", "run", "--config", str(up.config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 2, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"relay: error: environment variable {variable} "), run.stderr
    assert "only http:// proxies" in last and "Traceback" not in run.stderr
    assert PASSWORD not in run.stderr + run.stdout


def test_http_delivery_says_when_the_proxy_refuses_connect(
    gated, tinyproxy_factory, relay_factory
) -> None:
    """An https:// upstream.http_url is tunnelled with CONNECT by aiohttp; tinyproxy refuses that
    port, so /readyz names the proxy and its answer, and the events stay in the spool."""
    up, gates = gated
    proxy = tinyproxy_factory([gates["http"].port + 1])
    env = {
        **FAST_RETRY,
        **_no_proxy_environment(),
        **_gated_targets(up, gates),
        "RELAY_UPSTREAM__TRANSPORT": "http",
        "RELAY_UPSTREAM__HTTP_URL": f"https://{GATE_HOST}:{gates['http'].port}/api/status",
        "HTTPS_PROXY": proxy.url,
        "HTTP_PROXY": proxy.url,
    }
    relay = relay_factory(config=up.config, env=env).start()
    send(relay, [make_event() for _ in range(3)])
    expected = (
        f"not ready: the proxy {proxy.url} refused CONNECT {GATE_HOST}:{gates['http'].port}: 403"
    )
    wait_until(
        lambda: expected in _get(relay.url + "/readyz"), 20, "/readyz to say why", relay.output
    )
    assert f"CONNECT {GATE_HOST}:{gates['http'].port} HTTP/1.1" in proxy.requests()
    assert spool_stats(relay)["depth"] == 3
    assert gates.refused() == []


def test_relay_token_fetches_through_the_proxy(gated, tinyproxy_factory, tmp_path: Path) -> None:
    """`relay token`, the operator's check of a set-up, takes the same route as the relay."""
    up, gates = gated
    proxy = tinyproxy_factory([], user="relay")
    secret = tmp_path / "proxy-password"
    secret.write_text(PASSWORD)
    env = {
        **os.environ,
        **_no_proxy_environment(),
        **_gated_targets(up, gates),
        "HTTP_PROXY": f"http://relay@127.0.0.1:{proxy.port}",
        "RELAY_MASKINPORTEN__PROXY_PASSWORD_FILE": str(secret),
    }
    run = subprocess.run(
        [sys.executable, "-m", "relay", "token", "--config", str(up.config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("access token for MOVE_IP_991825827")
    token_url = f"http://{GATE_HOST}:{gates['maskinporten'].port}/token"
    assert f"POST {token_url} HTTP/1.1" in proxy.requests()
    assert gates.refused() == [] and gates["maskinporten"].accepted == 1
    assert PASSWORD not in run.stdout + run.stderr


class _Acks(BaseRequestHandler):
    received: list[bytes] = []

    async def request_response(self, payload: Payload) -> asyncio.Future:
        _Acks.received.append(payload.data or b"")
        answer = asyncio.get_running_loop().create_future()
        answer.set_result(Payload())
        return answer


async def test_rsocket_tls_runs_inside_tinyproxys_tunnel(tinyproxy_factory, tmp_path: Path) -> None:
    """upstream.tls through a real proxy: the relay's connection (RSocketConnection, as the sink
    opens it) verifies the server's certificate through tinyproxy's tunnel and gets an answer.
    The server's certificate names 127.0.0.1; the peer address it sees is the proxy's."""
    pki = make_tls_pki(tmp_path / "pki")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    peers: list[str] = []
    servers: list[RSocketServer] = []

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peername")[0])
        servers.append(RSocketServer(TransportTCP(reader, writer), handler_factory=_Acks))

    server = await asyncio.start_server(accept, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    proxy = tinyproxy_factory([port], user="relay")
    _Acks.received.clear()
    conn = await RSocketConnection.open(
        "127.0.0.1",
        port,
        tls=True,
        ssl_context=pki.client_context(),
        keepalive_interval=20,
        keepalive_max_lifetime=90,
        connect_timeout=10,
        proxy=Proxy("127.0.0.1", proxy.port, "upstream.proxy", "relay", PASSWORD),
    )
    try:
        await conn.request(b'{"status": "LEVERT"}', b"", timeout=10)
    finally:
        await conn.close()
        server.close()
    assert _Acks.received == [b'{"status": "LEVERT"}']
    assert peers == [PROXY_SOURCE]  # the TLS client hello came from the proxy
    assert f"CONNECT 127.0.0.1:{port} HTTP/1.1" in proxy.requests()
