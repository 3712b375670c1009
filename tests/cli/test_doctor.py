"""`relay doctor` against the real stand-ins on 127.0.0.1, each hop broken in turn: the failed
line names the broken hop and check, what depends on it says skipped, and no secret (keystore
password, access token) is printed. In-process runs (`relay.cli.main`) are fast; the e2e tests
run the command as a subprocess, with a running relay too."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from relay.cli import main
from relay.dev.certs import TestPki, make_test_pki
from relay.ops.doctor import Report
from relay.spool import Reject, SqliteSpool
from tests.helpers import RelayProcess, free_port
from tests.helpers.doctor import StandIns, make_stand_in_pki

PASSWORD = "Doctor-s3cret-Keystore-pw"
JWT = re.compile(r"eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """The stand-ins' PKI (made once per module): its keystore has a password of our own."""
    return make_stand_in_pki(tmp_path_factory.mktemp("doctor") / "pki", PASSWORD)


@pytest.fixture(scope="module")
def expired(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("expired"), expired=True)


@pytest.fixture
def up(tmp_path: Path, pki: TestPki):
    with StandIns(tmp_path / "upstream", pki.directory) as stand_ins:
        yield stand_ins


def keystore_env(pki: TestPki, password: str) -> dict[str, str]:
    return {
        "RELAY_MASKINPORTEN__KEYSTORE": str(pki.keystore),
        "RELAY_MASKINPORTEN__KEY_FILE": "",
        "RELAY_MASKINPORTEN__CERT_FILE": "",
        "RELAY_KEYSTORE_PASSWORD": password,
    }


def doctor(monkeypatch, capsys, config: Path, *args: str, env=None) -> tuple[int, str, str]:
    with monkeypatch.context() as patch:
        for name, value in (env or {}).items():
            patch.setenv(name, value)
        code = main(["doctor", "--config", str(config), *args])
    out, err = capsys.readouterr()
    return code, out, err


def checks(monkeypatch, capsys, config: Path, *args: str, env=None) -> tuple[int, list[dict]]:
    code, out, err = doctor(monkeypatch, capsys, config, "--json", *args, env=env)
    assert "Traceback" not in out + err
    _no_secrets(out + err)
    return code, orjson.loads(out)


def by_name(lines: list[dict]) -> dict[tuple[str, str], dict]:
    return {(c["hop"], c["check"]): c for c in lines}


def _no_secrets(text: str) -> None:
    assert PASSWORD not in text
    assert not JWT.search(text), "an access token was printed"


def _states(lines: list[dict]) -> dict[tuple[str, str], str]:
    return {k: v["state"] for k, v in by_name(lines).items()}


def test_healthy_rsocket_setup_passes_and_sends_no_status(tmp_path, up, monkeypatch, capsys):
    config = up.config(tmp_path / "relay.toml")
    code, lines = checks(monkeypatch, capsys, config, env=keystore_env(up_pki(up), PASSWORD))
    states = _states(lines)
    assert code == 0, lines
    assert all(c.keys() == {"hop", "check", "state", "detail", "todo"} for c in lines)
    not_ok = {k: s for k, s in states.items() if s != "ok"}
    # nothing listens on the configured listener: a warning, not a failure
    assert not_ok == {("relay", "running relay"): "warning"}, lines
    hops = [c["hop"] for c in lines]
    assert hops == sorted(
        hops, key=["config", "spool", "credentials", "maskinporten", "upstream", "relay"].index
    )
    assert ("upstream", "route and token") in states
    assert "local stand-in" in by_name(lines)[("maskinporten", "token claims")]["detail"]
    # the probe was acknowledged and dropped as the real service does: nothing stored
    stats = up.stats()
    assert stats["total"] == 0
    assert stats["dropped_by_reason"] == {"array": 1}


def up_pki(up: StandIns) -> TestPki:
    return up.upstream.pki


def test_text_output_names_each_check(tmp_path, up, monkeypatch, capsys):
    config = up.config(tmp_path / "relay.toml")
    code, out, err = doctor(monkeypatch, capsys, config)
    assert code == 0, out
    assert re.search(r"^OK +upstream +rsocket setup: SETUP accepted", out, re.M), out
    assert re.search(r"^WARNING +relay +running relay: no relay running", out, re.M), out
    assert out.rstrip().splitlines()[-1].startswith("result: all checks passed")
    _no_secrets(out + err)


def _broken(name: str, up: StandIns, expired: TestPki) -> tuple[dict[str, str], str, str]:
    """The environment that breaks `name`, and the (hop, check) that must fail."""
    a = up.addresses
    closed = free_port()
    return {
        "wrong password": (keystore_env(up_pki(up), "not-the-password"), "credentials", "keystore"),
        "expired certificate": (
            {
                "RELAY_MASKINPORTEN__KEY_FILE": str(expired.leaf_key),
                "RELAY_MASKINPORTEN__CERT_FILE": str(expired.leaf_cert),
            },
            "credentials",
            "certificate validity",
        ),
        "key of another certificate": (
            {"RELAY_MASKINPORTEN__CERT_FILE": str(expired.leaf_cert)},
            "credentials",
            "key matches certificate",
        ),
        "maskinporten down": (
            {"RELAY_MASKINPORTEN__TOKEN_URL": f"http://127.0.0.1:{closed}/token"},
            "maskinporten",
            "reachable",
        ),
        "wrong audience": (
            {"RELAY_MASKINPORTEN__AUDIENCE": a.maskinporten_url},  # no trailing slash
            "maskinporten",
            "token",
        ),
        "upstream port closed": ({"RELAY_UPSTREAM__PORT": str(closed)}, "upstream", "connect"),
        "wrong route": ({"RELAY_UPSTREAM__ROUTE": "log-fyre"}, "upstream", "route and token"),
    }[name]


# what must be skipped when a (hop, check) fails: the checks that depend on it
_DEPENDENTS = {
    ("credentials", "keystore"): [
        ("credentials", "key matches certificate"),
        ("maskinporten", "token"),
        ("maskinporten", "token claims"),
        ("upstream", "route and token"),
    ],
    ("credentials", "key matches certificate"): [
        ("credentials", "certificate validity"),
        ("maskinporten", "token"),
        ("upstream", "route and token"),
    ],
    ("credentials", "certificate validity"): [
        ("credentials", "organisation number"),
        ("maskinporten", "token"),
        ("upstream", "route and token"),
    ],
    ("maskinporten", "reachable"): [
        ("maskinporten", "token"),
        ("maskinporten", "token claims"),
        ("upstream", "route and token"),
    ],
    ("maskinporten", "token"): [("maskinporten", "token claims"), ("upstream", "route and token")],
    ("upstream", "connect"): [("upstream", "rsocket setup"), ("upstream", "route and token")],
    ("upstream", "route and token"): [],
}
BROKEN = [
    "wrong password",
    "key of another certificate",
    "expired certificate",
    "maskinporten down",
    "wrong audience",
    "upstream port closed",
    "wrong route",
]


@pytest.mark.parametrize("name", BROKEN)
def test_each_broken_hop_is_named(name, tmp_path, up, expired, monkeypatch, capsys):
    env, hop, check = _broken(name, up, expired)
    config = up.config(tmp_path / "relay.toml")
    code, lines = checks(monkeypatch, capsys, config, env=env)
    assert code == 1, lines
    failed = [(c["hop"], c["check"]) for c in lines if c["state"] == "failed"]
    assert failed == [(hop, check)], lines
    line = by_name(lines)[(hop, check)]
    assert line["detail"] and line["todo"], line
    states = _states(lines)
    for dependent in _DEPENDENTS[(hop, check)]:
        assert states[dependent] == "skipped", (dependent, lines)
    assert up.stats()["total"] == 0


def test_failure_texts_say_what_is_wrong(tmp_path, up, expired, monkeypatch, capsys):
    config = up.config(tmp_path / "relay.toml")
    env, _, _ = _broken("wrong route", up, expired)
    _, lines = checks(monkeypatch, capsys, config, env=env)
    line = by_name(lines)[("upstream", "route and token")]
    assert "No handler for destination 'log-fyre'" in line["detail"]
    assert "log-fire" in line["todo"]
    env, _, _ = _broken("wrong password", up, expired)
    _, lines = checks(monkeypatch, capsys, config, env=env)
    assert "wrong password" in by_name(lines)[("credentials", "keystore")]["detail"]
    env, _, _ = _broken("wrong audience", up, expired)
    _, lines = checks(monkeypatch, capsys, config, env=env)
    assert "maskinporten.audience" in by_name(lines)[("maskinporten", "token")]["todo"]


def test_untrusted_token_is_named_as_such(tmp_path, up, monkeypatch, capsys):
    up.set_faults(refuse_tokens_text="Failed to validate the token")
    config = up.config(tmp_path / "relay.toml")
    code, lines = checks(monkeypatch, capsys, config)
    assert code == 1
    line = by_name(lines)[("upstream", "route and token")]
    assert line["state"] == "failed"
    assert "does not trust tokens from this Maskinporten environment" in line["todo"]


def test_http_transport_healthy_and_refused_token(tmp_path, up, monkeypatch, capsys):
    config = up.config(tmp_path / "relay.toml", transport="http")
    code, lines = checks(monkeypatch, capsys, config)
    assert code == 0, lines
    assert _states(lines)[("upstream", "endpoint and token")] == "ok"
    assert "answered 400" in by_name(lines)[("upstream", "endpoint and token")]["detail"]
    up.set_faults(refuse_tokens_text="Failed to validate the token")
    code, lines = checks(monkeypatch, capsys, config)
    assert code == 1
    line = by_name(lines)[("upstream", "endpoint and token")]
    assert line["state"] == "failed" and "401" in line["detail"], line
    assert up.stats()["total"] == 0


def test_http_transport_wrong_path(tmp_path, up, monkeypatch, capsys):
    config = up.config(tmp_path / "relay.toml", transport="http")
    env = {"RELAY_UPSTREAM__HTTP_URL": f"{up.addresses.status_url}/api/wrong"}
    code, lines = checks(monkeypatch, capsys, config, env=env)
    assert code == 1
    line = by_name(lines)[("upstream", "endpoint and token")]
    assert line["state"] == "failed" and "wrong path" in line["detail"], line


def test_no_probe_request_leaves_route_unchecked(tmp_path, up, monkeypatch, capsys):
    config = up.config(tmp_path / "relay.toml")
    env = {"RELAY_UPSTREAM__ROUTE": "log-fyre"}
    code, lines = checks(monkeypatch, capsys, config, "--no-probe-request", env=env)
    assert code == 0, lines
    line = by_name(lines)[("upstream", "route and token")]
    assert line["state"] == "warning" and "not checked" in line["detail"]
    assert up.stats()["rsocket"]["requests"] == 0


def test_config_that_does_not_load_is_a_failed_line(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[upstream]\nhots = "x"\n')
    code, lines = checks(monkeypatch, capsys, bad)
    assert code == 1
    assert lines[0]["hop"] == "config" and lines[0]["state"] == "failed"
    assert "upstream.hots" in lines[0]["detail"]
    assert all(c["state"] == "skipped" for c in lines[1:]) and len(lines) > 1


def test_certificate_of_another_organisation_warns(tmp_path, up, monkeypatch, capsys):
    config = up.config(tmp_path / "relay.toml")
    env = {"RELAY_MASKINPORTEN__CLIENT_ID": "MOVE_IP_123456789"}
    code, lines = checks(monkeypatch, capsys, config, env=env)
    line = by_name(lines)[("credentials", "organisation number")]
    assert line["state"] == "warning" and "123456789" in line["detail"], line
    # Maskinporten's own verdict follows: that client is not registered
    assert by_name(lines)[("maskinporten", "token")]["state"] == "failed"
    assert code == 1


def test_dead_letters_in_the_spool_are_a_warning(tmp_path, up, monkeypatch, capsys):
    config = up.config(tmp_path / "relay.toml")

    async def fill() -> None:
        spool = await SqliteSpool.open(tmp_path / "spool", max_bytes=1 << 30, dedup_window=0)
        await spool.append([], [Reject(raw="not json", error="not JSON", source="http")])
        await spool.close()

    asyncio.run(fill())
    code, lines = checks(monkeypatch, capsys, config)
    assert code == 0, lines
    line = by_name(lines)[("spool", "dead letters")]
    assert line["state"] == "warning" and "1 dead letter" in line["detail"]
    assert "relay dlq list" in line["todo"]


@pytest.fixture
def refusing_proxy():
    """An HTTP proxy that answers every CONNECT with 403: its port."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                head = b""
                while b"\r\n\r\n" not in head and (chunk := conn.recv(4096)):
                    head += chunk
                conn.sendall(b"HTTP/1.1 403 Filtered\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    server.close()


def test_a_proxy_refusing_the_tunnel_is_named_masked(
    tmp_path, up, refusing_proxy, monkeypatch, capsys
):
    config = up.config(tmp_path / "relay.toml")
    env = {"RELAY_UPSTREAM__PROXY": f"http://relay:Proxy-pw-9@127.0.0.1:{refusing_proxy}"}
    code, out, err = doctor(monkeypatch, capsys, config, env=env)
    assert code == 1, out
    assert re.search(r"^FAILED +upstream +connect: .*refused CONNECT.*403 Filtered", out, re.M), out
    assert "http://relay:***@127.0.0.1" in out
    assert "Proxy-pw-9" not in out + err
    assert re.search(r"^SKIPPED +upstream +rsocket setup: needs upstream/connect", out, re.M), out


def test_a_peer_echoing_the_token_does_not_get_it_printed() -> None:
    report = Report()
    report.hide("eyJhbGciOi.secret-token.sig", "<access token>")
    report.fail("upstream", "route and token", "the service answered: eyJhbGciOi.secret-token.sig")
    assert report.checks[0].detail == "the service answered: <access token>"
    assert "secret-token" not in report.render()


# ---- as a user runs it: subprocesses ------------------------------------------------------------


def relay_doctor(config: Path, *args: str, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "relay", "doctor", "--config", str(config), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


@pytest.mark.e2e
def test_subprocess_each_broken_setup(tmp_path, up, expired):
    config = up.config(tmp_path / "relay.toml")
    healthy = relay_doctor(config)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    for name in BROKEN:
        env, hop, check = _broken(name, up, expired)
        result = relay_doctor(config, env=env)
        shown = f"{name}:\n{result.stdout}{result.stderr}"
        assert result.returncode == 1, shown
        assert "Traceback" not in result.stdout + result.stderr, shown
        assert re.search(rf"^FAILED +{hop} +{check}: ", result.stdout, re.M), shown
        assert f"the first broken hop is {hop} ({check})" in result.stdout, shown
        _no_secrets(result.stdout + result.stderr)
    bad = tmp_path / "bad.toml"
    bad.write_text("[spool\n")
    result = relay_doctor(bad, "--json")
    assert result.returncode == 1
    assert orjson.loads(result.stdout)[0]["state"] == "failed"


@pytest.mark.e2e
def test_subprocess_sees_the_running_relay(tmp_path, up):
    config = up.config(tmp_path / "relay.toml")
    relay = RelayProcess(tmp_path / "spool", config=config).start()
    try:
        env = {"RELAY_INGEST__HTTP__LISTEN": f"127.0.0.1:{relay.port}"}
        result = relay_doctor(config, "--json", env=env)
        lines = by_name(orjson.loads(result.stdout))
        running = lines[("relay", "running relay")]
        assert running["state"] == "ok", running
        assert f"127.0.0.1:{relay.port}/status" in running["detail"]
        assert result.returncode == 0, result.stdout
    finally:
        relay.stop()


async def _refusing_peer(code: str, text: str) -> asyncio.Server:
    """An RSocket peer that routes and then answers every request with an error (code, text)."""
    from rsocket.error_codes import ErrorCode
    from rsocket.exceptions import RSocketApplicationError, RSocketProtocolError
    from rsocket.request_handler import BaseRequestHandler
    from rsocket.rsocket_server import RSocketServer
    from rsocket.transports.tcp import TransportTCP

    class Refuse(BaseRequestHandler):
        async def request_response(self, payload):
            if code == "APPLICATION_ERROR":
                raise RSocketApplicationError(text)
            raise RSocketProtocolError(ErrorCode[code], data=text)

    def accept(reader, writer):
        RSocketServer(TransportTCP(reader, writer), handler_factory=Refuse)

    return await asyncio.start_server(accept, "127.0.0.1", 0)


async def _chatty_peer(serving: set[asyncio.Task]) -> asyncio.Server:
    """Sends its own KEEPALIVEs (respond flag) every 0.2 s and never echoes the client's;
    `serving` holds the connections' tasks until they end."""
    from rsocket.frame import KeepAliveFrame, serialize_with_frame_size_header

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        serving.add(task)
        task.add_done_callback(serving.discard)
        frame = KeepAliveFrame(data=b"")
        frame.flags_respond = True
        try:
            while not writer.transport.is_closing():  # until the doctor hangs up
                writer.write(serialize_with_frame_size_header(frame))
                await writer.drain()
                await asyncio.sleep(0.2)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def _until_ended(tasks: set[asyncio.Task]) -> None:
    if tasks:
        await asyncio.wait(set(tasks), timeout=5)


def _pointed_at(up: StandIns, config: Path, port: int) -> Path:
    text = re.sub(r"(?m)^port = \d+$", f"port = {port}", config.read_text(), count=1)
    config.write_text(text)
    return config


@pytest.mark.parametrize(
    ("code", "text", "state"),
    [
        ("APPLICATION_ERROR", "not a status object", "warning"),
        ("INVALID", "JSON decoding error: Cannot deserialize", "warning"),
        ("REJECTED", "busy", "warning"),
        # rsocket-py's router names only the route it has no handler for
        ("APPLICATION_ERROR", "log-fire", "failed"),
        ("APPLICATION_ERROR", "Invalid audience", "failed"),
    ],
)
def test_a_service_refusing_the_probe_is_judged_by_what_it_says(
    tmp_path, up, monkeypatch, capsys, code, text, state
):
    """A refusal about the data (an array, not a status) comes after routing and the token
    check: only a warning. Anything else may be the route or the token: a failed line."""
    server = up._run(_refusing_peer(code, text))
    try:
        config = _pointed_at(
            up, up.config(tmp_path / "relay.toml"), server.sockets[0].getsockname()[1]
        )
        exit_code, lines = checks(monkeypatch, capsys, config)
    finally:
        server.close()
    line = by_name(lines)[("upstream", "route and token")]
    assert line["state"] == state, line
    assert text in line["detail"]
    assert exit_code == (1 if state == "failed" else 0)


def test_a_peer_that_never_echoes_the_keepalive_is_bounded(tmp_path, up, monkeypatch, capsys):
    serving: set[asyncio.Task] = set()
    server = up._run(_chatty_peer(serving))
    try:
        config = _pointed_at(
            up, up.config(tmp_path / "relay.toml"), server.sockets[0].getsockname()[1]
        )
        started = time.monotonic()
        exit_code, lines = checks(monkeypatch, capsys, config, "--timeout", "1")
        took = time.monotonic() - started
    finally:
        server.close()
        up._run(_until_ended(serving))
    line = by_name(lines)[("upstream", "rsocket setup")]
    assert line["state"] == "failed" and "within 1 s" in line["detail"], line
    assert exit_code == 1 and took < 15, took


def test_a_token_cut_short_in_an_answer_is_not_printed() -> None:
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzY29wZSI6ImVmb3JtaWRsaW5nIn0.c2lnbmF0dXJl"
    report = Report()
    report.hide(token, "<access token>")
    report.fail("upstream", "route and token", f"the service answered: {token[:40]}")
    assert "eyJ" not in report.render()
