"""The listeners' TLS settings as an operator meets them: one-line errors naming the setting (from
validation, from loading the files, from `relay check-config`), the warning for a listener open
to the network in plain text, and the failed-handshake counter on /metrics."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest

from relay.cli import main
from relay.config import load_config
from relay.config.advice import config_advice
from relay.errors import ConfigError, UserError
from relay.ops import collectors
from relay.ops.metrics import Metrics
from relay.sources.tls import listeners_tls
from tests.helpers import InProcessRelay, inprocess_relay, make_event
from tests.helpers.tls import TlsPki, make_tls_pki
from tests.helpers.tls_listener import started

SECTIONS = ("http", "syslog", "json_lines", "relp")


@pytest.fixture
def pki(tmp_path: Path) -> TlsPki:
    return make_tls_pki(tmp_path / "pki")


def env(section: str, **settings: str) -> dict[str, str]:
    return {f"RELAY_INGEST__{section.upper()}__{k.upper()}": v for k, v in settings.items()}


def tls_env(section: str, pki: TlsPki, **override: str) -> dict[str, str]:
    settings = {
        "tls_cert_file": str(pki.server_cert),
        "tls_key_file": str(pki.server_key),
        "tls_client_ca_file": str(pki.ca_cert),
    }
    settings.update(override)
    return env(section, **settings)


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("section", SECTIONS)
def test_half_set_pairs_are_one_line_config_errors(section: str, pki: TlsPki) -> None:
    for settings, named in (
        ({"tls_cert_file": str(pki.server_cert)}, "tls_key_file"),
        ({"tls_key_file": str(pki.server_key)}, "tls_cert_file"),
        ({"tls_client_ca_file": str(pki.ca_cert)}, "tls_client_ca_file"),
    ):
        with pytest.raises(ConfigError) as error:
            load_config(None, environ=env(section, **settings))
        message = str(error.value)
        assert "\n" not in message and f"ingest.{section}" in message and named in message


@pytest.mark.parametrize(
    ("override", "named", "why"),
    [
        ({"tls_cert_file": "/nonexistent/server.pem"}, "tls_cert_file", "No such file"),
        ({"tls_key_file": "/nonexistent/server.key"}, "tls_key_file", "No such file"),
        ({"tls_client_ca_file": "/nonexistent/ca.pem"}, "tls_client_ca_file", "No such file"),
        ({"tls_key_file": "CLIENT_KEY"}, "tls_cert_file", "key values mismatch"),
        ({"tls_client_ca_file": "GARBAGE"}, "tls_client_ca_file", "PEM"),
        ({"tls_cert_file": "GARBAGE"}, "tls_cert_file", "PEM"),
    ],
)
def test_unloadable_files_are_one_line_errors_naming_the_setting(
    pki: TlsPki, override: dict[str, str], named: str, why: str
) -> None:
    garbage = pki.directory / "garbage.pem"
    garbage.write_bytes(b"\x00\x01 not a certificate \xff")
    paths = {"CLIENT_KEY": str(pki.client_key), "GARBAGE": str(garbage)}
    override = {k: paths.get(v, v) for k, v in override.items()}
    cfg = load_config(None, environ=tls_env("json_lines", pki, **override))
    with pytest.raises(UserError) as error:
        listeners_tls(cfg)
    message = str(error.value)
    assert "\n" not in message, message
    assert "ingest.json_lines" in message and why in message, message
    assert f"ingest.json_lines.{named}" in message, message
    assert "BEGIN" not in message and "PRIVATE" not in message  # no file content, no key


def _one_line_error(code: int, stderr: str) -> str:
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("relay: error: "), stderr
    return lines[0]


def test_check_config_loads_the_certificates(
    pki: TlsPki, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in tls_env("syslog", pki, tls_key_file=str(pki.client_key)).items():
        monkeypatch.setenv(name, value)
    line = _one_line_error(main(["check-config"]), capsys.readouterr().err)
    assert "ingest.syslog" in line and "key values mismatch" in line
    monkeypatch.setenv("RELAY_INGEST__SYSLOG__TLS_KEY_FILE", str(pki.server_key))
    monkeypatch.setenv("RELAY_INGEST__SYSLOG__TLS_CLIENT_CA_FILE", str(pki.directory / "none"))
    line = _one_line_error(main(["check-config"]), capsys.readouterr().err)
    assert "ingest.syslog.tls_client_ca_file" in line and "No such file" in line
    monkeypatch.setenv("RELAY_INGEST__SYSLOG__TLS_CLIENT_CA_FILE", str(pki.ca_cert))
    assert main(["check-config"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "ingest.syslog:" in line]
    assert len(notes) == 1 and notes[0].startswith("# note: ingest.syslog: mutual tls; "), notes
    assert f"{pki.server_cert} valid until 20" in notes[0]


# -- advice ------------------------------------------------------------------------------------


def _insecure(environ: dict[str, str]) -> list[str]:
    cfg = load_config(None, environ=environ)
    return [
        a.text
        for a in config_advice(cfg, delivering=False)
        if a.level >= logging.WARNING and "reachable from other machines" in a.text
    ]


@pytest.mark.parametrize("host", ["0.0.0.0", "[::]", "192.0.2.10", "relay.example.org"])
@pytest.mark.parametrize(
    ("section", "key"),
    [("http", "listen"), ("syslog", "tcp_listen"), ("json_lines", "tcp_listen")]
    + [("relp", "listen"), ("syslog", "udp_listen")],
)
def test_a_plain_listener_on_the_network_is_one_warning(host: str, section: str, key: str) -> None:
    environ = env(section, **{key: f"{host}:5514"})
    if section != "http":
        environ.update(env("http", listen="127.0.0.1:8080"))
    warnings = _insecure(environ)
    assert len(warnings) == 1, warnings
    assert f"ingest.{section}.{key}" in warnings[0] and "no TLS" in warnings[0]
    assert "\n" not in warnings[0]


@pytest.mark.parametrize("section", ["syslog", "json_lines", "relp"])
def test_tls_or_loopback_quiets_the_warning(section: str, pki: TlsPki) -> None:
    key = "tcp_listen" if section != "relp" else "listen"
    assert _insecure(env(section, **{key: "127.0.0.1:5514"})) == []
    assert _insecure(env(section, **{key: "[::1]:5514"})) == []
    assert _insecure(env(section, **{key: "localhost:5514"})) == []
    assert _insecure({**env(section, **{key: "0.0.0.0:5514"}), **tls_env(section, pki)}) == []
    # TLS without client certificates is still TLS: encrypted, and the operator chose it
    quiet = {**env(section, **{key: "0.0.0.0:5514"}), **tls_env(section, pki)}
    quiet[f"RELAY_INGEST__{section.upper()}__TLS_CLIENT_CA_FILE"] = ""
    assert _insecure(quiet) == []


def test_http_on_the_network_needs_tls_or_a_bearer_token(pki: TlsPki, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token-value\n")
    assert len(_insecure(env("http", listen="0.0.0.0:8080"))) == 1
    assert _insecure(env("http", listen="0.0.0.0:8080", auth_token_file=str(token))) == []
    assert _insecure({**env("http", listen="0.0.0.0:8080"), **tls_env("http", pki)}) == []
    assert _insecure(env("http", listen="127.0.0.1:8080")) == []  # the default


def test_check_config_prints_the_warning(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RELAY_INGEST__JSON_LINES__TCP_LISTEN", "0.0.0.0:5000")
    assert main(["check-config"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "ingest.json_lines.tcp_listen" in line]
    assert len(warnings) == 1 and warnings[0].startswith("# warning: INSECURE"), err


# -- metrics -----------------------------------------------------------------------------------


async def test_failed_handshakes_are_counted_on_metrics(tmp_path: Path, pki: TlsPki) -> None:
    relay: InProcessRelay
    async with inprocess_relay(tmp_path) as relay:
        listener = await started(relay, "json_lines", pki)
        metrics = Metrics()
        collectors.register_listeners(metrics, {"json_lines": relay.json_lines.tcp}, lambda: None)
        await listener.refused(pki.client_context())
        await listener.refused(None)
        await listener.send(pki.good_client_context(), [make_event()])
        await relay.collect(1)
        text = metrics.render().decode()
        lines = [
            line
            for line in text.splitlines()
            if line.startswith('relay_tls_handshake_failures_total{listener="ingest.json_lines"}')
        ]
        # other tests' listeners in this process may still be alive: at least ours
        assert lines and float(lines[0].split()[-1]) >= 2, text


def test_an_expired_listener_certificate_is_one_warning_and_on_metrics(
    pki: TlsPki, caplog: pytest.LogCaptureFixture
) -> None:
    """An expired certificate still loads (clients then refuse the listener): the relay says so
    once per certificate, and /metrics shows when each listener's certificate expires."""
    from cryptography import x509

    # a certificate and its key that expired a day ago (made as a client's, served here)
    settings = {"tls_cert_file": str(pki.expired_client_cert)}
    settings["tls_key_file"] = str(pki.expired_client_key)
    cfg = load_config(None, environ=env("relp", **settings))
    with caplog.at_level(logging.WARNING, "relay.sources.tls"):
        tls = listeners_tls(cfg)["ingest.relp"]
        again = listeners_tls(cfg)["ingest.relp"]  # a reload's trial copy: no second line
    lines = [r.getMessage() for r in caplog.records if "expired on" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("ingest.relp.tls_cert_file: "), lines
    expires = x509.load_pem_x509_certificate(pki.expired_client_cert.read_bytes())
    assert tls is not None and again is not None
    assert tls.not_after == expires.not_valid_after_utc.timestamp()
    metrics = Metrics()
    collectors.register_listeners(metrics, {}, lambda: None)
    text = metrics.render().decode()
    sample = 'relay_tls_certificate_expiry_timestamp_seconds{listener="ingest.relp"}'
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(sample)]
    assert values == [tls.not_after], text
    # a good certificate: no warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, "relay.sources.tls"):
        listeners_tls(load_config(None, environ=tls_env("http", pki)))
    assert not caplog.records


def test_the_listener_context_is_hardened(pki: TlsPki) -> None:
    cfg = load_config(None, environ=tls_env("http", pki))
    tls = listeners_tls(cfg)["ingest.http"]
    assert tls is not None
    context = tls.context
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.verify_mode == ssl.CERT_REQUIRED
