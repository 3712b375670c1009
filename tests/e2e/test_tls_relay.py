"""`relay run` with TLS on its listeners, as an operator runs it: HTTPS, syslog over TLS (RFC 5425)
and JSON lines over TLS, all with client certificates required, delivering to the dev upstream;
and the one-line errors of a TLS setup that cannot load, from `relay run` and `relay check-config`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from tests.helpers import RelayProcess, make_event
from tests.helpers.tls import TlsPki, make_tls_pki, peer_serial, serial_of
from tests.helpers.tls_listener import RELP_OFFERS
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.e2e


def tls_env(pki: TlsPki, section: str) -> dict[str, str]:
    prefix = f"RELAY_INGEST__{section.upper()}__"
    return {
        prefix + "TLS_CERT_FILE": str(pki.server_cert),
        prefix + "TLS_KEY_FILE": str(pki.server_key),
        prefix + "TLS_CLIENT_CA_FILE": str(pki.ca_cert),
    }


def start(relay: RelayProcess, timeout: float = 20.0) -> None:
    """`relay run` until its ready line (RelayProcess.start asks /healthz over plain HTTP)."""
    with open(relay.log, "ab") as log:
        args = [sys.executable, "-m", "relay", "run", "--config", str(relay.config)]
        relay.proc = subprocess.Popen(args, env=relay.env, stdout=log, stderr=log)

    def ready() -> bool:
        if relay.proc is not None and relay.proc.poll() is not None:
            raise AssertionError(f"relay exited with {relay.proc.returncode}:\n{relay.output()}")
        found = re.search(r"relay ready: http [^ ,;]*:(\d+)", relay.output())
        if found:
            relay.port = int(found.group(1))
        return bool(found)

    wait_until(ready, timeout, "the relay to be ready", relay.output)


def https(
    port: int, path: str, context: ssl.SSLContext, body: bytes | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"https://localhost:{port}{path}",
        data=body,
        headers={"Content-Type": "application/x-ndjson"} if body else {},
    )
    with urllib.request.urlopen(request, timeout=10, context=context) as r:
        return r.status, r.read()


def stream(port: int, context: ssl.SSLContext, data: bytes) -> int:
    """Send `data` over TLS to a stream listener; the serial of the certificate it showed."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as conn,
    ):
        conn.sendall(data)
        serial = peer_serial(conn)
    return serial


def relp_session(port: int, context: ssl.SSLContext, events: list[dict]) -> bytes:
    """A RELP session over TLS as librelp's client opens it: open, a syslog command per event,
    close; everything the relay answered, up to its closing the connection."""
    frames = [b"1 open %d %s\n" % (len(RELP_OFFERS), RELP_OFFERS)]
    for txnr, event in enumerate(events, 2):
        msg = b"<134>1 2024-05-01T10:00:00Z producer app - - - " + orjson.dumps(event)
        frames.append(b"%d syslog %d %s\n" % (txnr, len(msg), msg))
    frames.append(b"%d close 0\n" % (len(events) + 2))
    answers = b""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=15) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as conn,
    ):
        conn.sendall(b"".join(frames))
        while chunk := conn.recv(65536):
            answers += chunk
    return answers


def test_every_listener_over_mutual_tls_delivers(
    tmp_path: Path, upstream_factory, relay_factory
) -> None:
    pki = make_tls_pki(tmp_path / "pki")
    up = upstream_factory()
    env = {
        **tls_env(pki, "http"),
        **tls_env(pki, "syslog"),
        **tls_env(pki, "json_lines"),
        "RELAY_INGEST__SYSLOG__TCP_LISTEN": "127.0.0.1:0",
        "RELAY_INGEST__JSON_LINES__TCP_LISTEN": "127.0.0.1:0",
        # open to the network, plain text: one warning line at start-up
        "RELAY_INGEST__SYSLOG__UDP_LISTEN": "0.0.0.0:0",
    }
    env.update(tls_env(pki, "relp"))
    env["RELAY_INGEST__RELP__LISTEN"] = "127.0.0.1:0"
    relay = relay_factory(config=up.config, env=env)
    start(relay)
    good, no_cert = pki.good_client_context(), pki.client_context()
    server_serial = serial_of(pki.server_cert)

    assert https(relay.port, "/healthz", good)[0] == 200
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        https(relay.port, "/healthz", no_cert)
    by_http = [make_event() for _ in range(20)]
    body = b"\n".join(orjson.dumps(e) for e in by_http)
    status, answer = https(relay.port, "/api/status", good, body)
    assert status == 200 and orjson.loads(answer)["accepted"] == 20

    by_syslog = [make_event() for _ in range(20)]
    frames = b""
    for event in by_syslog:
        msg = b"<134>1 2024-05-01T10:00:00Z producer app - - - " + orjson.dumps(event)
        frames += b"%d %s" % (len(msg), msg)
    assert stream(relay.listening("syslog tcp"), good, frames) == server_serial

    by_lines = [make_event() for _ in range(20)]
    lines = b"".join(orjson.dumps(e) + b"\n" for e in by_lines)
    assert stream(relay.listening("json lines"), good, lines) == server_serial
    # refused: nothing it sent is stored or delivered
    refused = make_event()
    with contextlib.suppress(ssl.SSLError, ConnectionError):
        stream(relay.listening("json lines"), no_cert, orjson.dumps(refused) + b"\n")

    by_relp = [make_event() for _ in range(20)]
    answers = relp_session(relay.listening("relp"), good, by_relp)
    assert answers.count(b" rsp 6 200 OK\n") == 20, answers

    expected = {e["message_id"] for e in by_http + by_syslog + by_lines + by_relp}
    wait_until(
        lambda: expected <= {s["message_id"] for s in up.statuses()},
        30,
        "every event upstream",
        relay.output,
    )
    assert refused["message_id"] not in {s["message_id"] for s in up.statuses()}
    assert relay.stop() == 0
    output = relay.output()
    warnings = [line for line in output.splitlines() if "INSECURE" in line]
    assert len(warnings) == 1 and "ingest.syslog.udp_listen" in warnings[0], output
    assert "PRIVATE KEY" not in output and "Traceback" not in output


def _run(command: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "relay", command],
        env={**os.environ, "RELAY_SPOOL__PATH": str(tmp_path / "spool"), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("breakage", "named"),
    [
        ("key file missing", "ingest.http.tls_key_file"),
        ("key of another certificate", "ingest.http.tls_cert_file"),
        ("CA file garbage", "ingest.http.tls_client_ca_file"),
    ],
)
def test_a_tls_setup_that_cannot_load_is_one_line_from_run_and_check_config(
    tmp_path: Path, breakage: str, named: str
) -> None:
    pki = make_tls_pki(tmp_path / "pki")
    env = tls_env(pki, "http")
    if breakage == "key file missing":
        env["RELAY_INGEST__HTTP__TLS_KEY_FILE"] = str(tmp_path / "gone.key")
    elif breakage == "key of another certificate":
        env["RELAY_INGEST__HTTP__TLS_KEY_FILE"] = str(pki.client_key)
    else:
        (tmp_path / "ca.pem").write_bytes(b"\x89PNG\r\n\x1a\n not a CA")
        env["RELAY_INGEST__HTTP__TLS_CLIENT_CA_FILE"] = str(tmp_path / "ca.pem")
    for command in ("run", "check-config"):
        result = _run(command, {**env, "RELAY_INGEST__HTTP__LISTEN": "127.0.0.1:0"}, tmp_path)
        assert result.returncode == 2, (command, result.stderr)
        # `relay run` may log a line before it (delivery is off here); the error is one line
        errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
        assert len(errors) == 1 and errors[0].startswith("relay: error: "), result.stderr
        assert named in errors[0] and "Traceback" not in result.stderr, (command, errors[0])
        assert "PRIVATE" not in result.stderr
    assert not (tmp_path / "spool").exists()  # checked before the spool is opened


def test_sigterm_while_clients_are_mid_handshake(tmp_path: Path, relay_factory) -> None:
    """Clients that connected and said nothing do not hold up a clean stop."""
    pki = make_tls_pki(tmp_path / "pki")
    env = {**tls_env(pki, "json_lines"), "RELAY_INGEST__JSON_LINES__TCP_LISTEN": "127.0.0.1:0"}
    relay = relay_factory(env=env)
    relay.config = None
    relay.start()
    silent = [socket.create_connection(("127.0.0.1", relay.listening("json lines"))) for _ in "ab"]
    assert relay.proc is not None
    relay.proc.send_signal(signal.SIGTERM)
    assert relay.proc.wait(timeout=15) == 0, relay.output()
    for sock in silent:
        sock.close()
