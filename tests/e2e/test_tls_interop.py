"""Peers no one here wrote, over TLS: Debian's rsyslogd with the GnuTLS stream driver (`gtls`,
package rsyslog-gnutls) forwarding to the relay's syslog TLS listener (RFC 5425, octet-counted
frames inside TLS) with and without a client certificate; curl posting over HTTPS with mutual
TLS; `openssl s_client` sending JSON lines with a client certificate."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import orjson
import pytest

from relay.config import SyslogIngestConfig
from relay.sources.syslog import start_syslog
from relay.sources.tls import listener_tls
from tests.helpers import InProcessRelay, eventually, inprocess_relay, make_event
from tests.helpers.tls import TlsPki, make_tls_pki
from tests.helpers.tls_listener import started

RSYSLOGD = "/usr/sbin/rsyslogd"
GTLS = [
    Path(d) / "lmnsd_gtls.so"
    for d in ("/usr/lib/x86_64-linux-gnu/rsyslog", "/usr/lib/aarch64-linux-gnu/rsyslog")
    + ("/usr/lib/rsyslog", "/usr/lib64/rsyslog")
]

pytestmark = pytest.mark.interop
needs_rsyslog_gtls = [
    pytest.mark.skipif(
        not os.access(RSYSLOGD, os.X_OK),
        reason=f"{RSYSLOGD} is not installed (Debian/Ubuntu: apt-get install rsyslog)",
    ),
    pytest.mark.skipif(
        not any(p.exists() for p in GTLS),
        reason="rsyslog's gtls driver (lmnsd_gtls.so) is not installed (Debian/Ubuntu: "
        "apt-get install rsyslog-gnutls)",
    ),
]
CURL = shutil.which("curl")
OPENSSL = shutil.which("openssl")


def rsyslog_conf(work: Path, pki: TlsPki, relay_port: int, client_cert: bool) -> Path:
    """rsyslogd taking plain syslog on a port of its choice (written to input.port) and
    forwarding the "eformidling-status" messages over TLS to the relay, checking the relay's
    certificate against our CA and its name (localhost)."""
    tls_files = f'DefaultNetstreamDriverCAFile="{pki.ca_cert}"'
    if client_cert:
        tls_files += (
            f' DefaultNetstreamDriverCertFile="{pki.client_cert}"'
            f' DefaultNetstreamDriverKeyFile="{pki.client_key}"'
        )
    conf = work / "rsyslog.conf"
    conf.write_text(
        f'global(workDirectory="{work}" {tls_files})\n'
        'module(load="imtcp")\n'
        'input(type="imtcp" address="127.0.0.1" port="0" '
        f'listenPortFileName="{work / "input.port"}")\n'
        'template(name="RelayEvent" type="string" string="%msg%")\n'
        'if $programname == "eformidling-status" then {\n'
        '  action(type="omfwd" target="127.0.0.1" protocol="tcp" '
        f'port="{relay_port}" TCP_Framing="octet-counted" template="RelayEvent" '
        'StreamDriver="gtls" StreamDriverMode="1" StreamDriverAuthMode="x509/name" '
        'StreamDriverPermittedPeers="localhost" '
        'action.resumeRetryCount="-1" action.resumeInterval="1")\n'
        "  stop\n"
        "}\n"
    )
    return conf


@pytest.mark.parametrize("mutual", [True, False], ids=["mutual-tls", "tls"])
@needs_rsyslog_gtls[0]
@needs_rsyslog_gtls[1]
async def test_rsyslog_gtls_forwards_to_the_syslog_tls_listener(
    tmp_path: Path, mutual: bool
) -> None:
    pki = make_tls_pki(tmp_path / "pki")
    relay = await InProcessRelay.open(tmp_path)
    tls = listener_tls(
        "ingest.syslog",
        SyslogIngestConfig(
            tls_cert_file=str(pki.server_cert),
            tls_key_file=str(pki.server_key),
            tls_client_ca_file=str(pki.ca_cert) if mutual else "",
        ),
    )
    relay.syslog = await start_syslog(
        SyslogIngestConfig(tcp_listen="127.0.0.1:0", udp_listen=""), relay.intake, tls
    )
    work = tmp_path / "rsyslog"
    work.mkdir()
    conf = rsyslog_conf(work, pki, relay.syslog.tcp_port or 0, client_cert=mutual)
    log = work / "rsyslogd.log"
    with open(log, "wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            RSYSLOGD, "-n", "-f", conf, "-i", work / "pid", stdout=log_file, stderr=log_file
        )
    try:
        writer = await _producer(work, proc, log)
        events = [make_event() for _ in range(50)]
        for event in events:
            writer.write(
                b"<13>May  1 10:00:00 producer eformidling-status: %s\n" % orjson.dumps(event)
            )
        await writer.drain()
        seen = await relay.collect(len(events), timeout=30)
        assert {e["message_id"] for e in seen} == {e["message_id"] for e in events}
        stats = relay.spool.stats()
        assert (stats.events, stats.dead_letters) == (len(events), 0), log.read_text()
        assert tls is not None and tls.handshake_failures == 0
        writer.close()
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
        await relay.close()


@needs_rsyslog_gtls[0]
@needs_rsyslog_gtls[1]
async def test_rsyslog_without_a_client_certificate_is_refused(tmp_path: Path) -> None:
    pki = make_tls_pki(tmp_path / "pki")
    relay = await InProcessRelay.open(tmp_path)
    settings = SyslogIngestConfig(
        tls_cert_file=str(pki.server_cert),
        tls_key_file=str(pki.server_key),
        tls_client_ca_file=str(pki.ca_cert),
    )
    tls = listener_tls("ingest.syslog", settings)
    assert tls is not None
    relay.syslog = await start_syslog(
        SyslogIngestConfig(tcp_listen="127.0.0.1:0", udp_listen=""), relay.intake, tls
    )
    work = tmp_path / "rsyslog"
    work.mkdir()
    conf = rsyslog_conf(work, pki, relay.syslog.tcp_port or 0, client_cert=False)
    log = work / "rsyslogd.log"
    with open(log, "wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            RSYSLOGD, "-n", "-f", conf, "-i", work / "pid", stdout=log_file, stderr=log_file
        )
    try:
        writer = await _producer(work, proc, log)
        writer.write(
            b"<13>May  1 10:00:00 producer eformidling-status: %s\n" % orjson.dumps(make_event())
        )
        await writer.drain()
        await eventually(
            lambda: tls.handshake_failures >= 2, 30, "rsyslog's attempts refused", log.read_text
        )
        assert relay.spool.stats().events == 0
        writer.close()
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
        await relay.close()


async def _producer(work: Path, proc: asyncio.subprocess.Process, log: Path):
    port_file = work / "input.port"

    def port() -> int:
        if proc.returncode is not None:
            raise AssertionError(f"rsyslogd exited:\n{log.read_text()}")
        text = port_file.read_text().strip() if port_file.exists() else ""
        return int(text) if text else 0

    await eventually(port, 15, "rsyslogd to say which port it listens on", log.read_text)
    writers: list[asyncio.StreamWriter] = []

    async def connected() -> bool:
        try:
            writers.append((await asyncio.open_connection("127.0.0.1", port()))[1])
        except OSError:
            return False
        return True

    await eventually(connected, 15, "rsyslogd to listen", log.read_text)
    return writers[0]


@pytest.mark.skipif(CURL is None, reason="curl is not installed (apt-get install curl)")
async def test_curl_posts_over_https_with_a_client_certificate(tmp_path: Path) -> None:
    pki = make_tls_pki(tmp_path / "pki")
    async with inprocess_relay(tmp_path) as relay:
        listener = await started(relay, "http", pki)
        events = [make_event() for _ in range(5)]
        body = tmp_path / "events.ndjson"
        body.write_bytes(b"\n".join(orjson.dumps(e) for e in events))
        url = f"https://localhost:{listener.port}/api/status"
        common = [
            CURL,
            "-sS",
            "--cacert",
            str(pki.ca_cert),
            "-H",
            "Content-Type: application/x-ndjson",
        ]
        good = await asyncio.create_subprocess_exec(
            *common,
            "--cert",
            str(pki.client_cert),
            "--key",
            str(pki.client_key),
            "--data-binary",
            f"@{body}",
            "-w",
            "\n%{http_code}",
            url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await good.communicate()
        assert good.returncode == 0, err
        assert out.decode().rsplit("\n", 1)[-1] == "200", out
        bad = await asyncio.create_subprocess_exec(
            *common,
            "--data-binary",
            f"@{body}",
            url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await bad.communicate()
        assert bad.returncode != 0 and b'"accepted"' not in out, (out, err)
        seen = await relay.collect(5)
        assert {e["message_id"] for e in seen} == {e["message_id"] for e in events}


@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed (apt-get install openssl)")
async def test_openssl_s_client_sends_json_lines_with_a_client_certificate(tmp_path: Path) -> None:
    pki = make_tls_pki(tmp_path / "pki")
    async with inprocess_relay(tmp_path) as relay:
        listener = await started(relay, "json_lines", pki)
        events = [make_event() for _ in range(5)]
        client = await asyncio.create_subprocess_exec(
            OPENSSL,
            "s_client",
            "-quiet",
            "-no_ign_eof",  # -quiet alone would wait for the relay to close after our EOF
            "-connect",
            f"127.0.0.1:{listener.port}",
            "-servername",
            "localhost",
            "-verify_return_error",
            "-CAfile",
            str(pki.ca_cert),
            "-cert",
            str(pki.client_cert),
            "-key",
            str(pki.client_key),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert client.stdin is not None
        client.stdin.write(b"".join(orjson.dumps(e) + b"\n" for e in events))
        await client.stdin.drain()
        seen = await relay.collect(5, timeout=20)
        assert {e["message_id"] for e in seen} == {e["message_id"] for e in events}
        client.stdin.close()
        await asyncio.wait_for(client.wait(), 10)
        assert listener.tls.handshake_failures == 0
