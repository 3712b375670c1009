"""The deployment examples in deploy/: present, consistent with the relay's settings, and sane.

No Docker, Kubernetes, Fluent Bit or Vector here, and no YAML parser: the YAML files are
checked for the strings the set-ups rely on. What can be checked for real is: every
RELAY_<SECTION>__<KEY> variable the files set names a real setting and, with the values the
files give it, loads on top of deploy/relay.toml; the systemd unit passes `systemd-analyze
verify` (where installed); the Dockerfile's exec forms are valid JSON and its COPY sources exist.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
import typing
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.config import Config, load_config, parse_duration

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
SERVICE = DEPLOY / "relay.service"
K8S = DEPLOY / "kubernetes" / "relay-sidecar.yaml"
FLUENT_BIT = DEPLOY / "fluent-bit" / "fluent-bit.yaml"
VECTOR = DEPLOY / "vector" / "vector.yaml"
LOGBACK = DEPLOY / "logback" / "logback-spring.xml"
RELAY_TOML = DEPLOY / "relay.toml"
README = DEPLOY / "README.md"

ALL_FILES = [DOCKERFILE, COMPOSE, SERVICE, K8S, FLUENT_BIT, VECTOR, LOGBACK, RELAY_TOML, README]
YAML_FILES = [COMPOSE, K8S, FLUENT_BIT, VECTOR]
ENV_FILES = [DOCKERFILE, COMPOSE, SERVICE, K8S]

ENV_NAME = re.compile(r"\bRELAY_[A-Z_]+__[A-Z_]+\b")


def _setting_paths(cls: type = Config, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = (*prefix, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _setting_paths(hints[f.name], path)
        else:
            yield path


# every environment name the loader accepts, from the config dataclasses themselves
SETTING_ENV = {"RELAY_" + "__".join(p).upper(): ".".join(p) for p in _setting_paths()}


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _shutdown_timeout() -> float:
    return load_config(RELAY_TOML, environ={}).lifecycle.shutdown_timeout


# ---- presence and shape ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ALL_FILES, ids=_rel)
def test_file_is_there(path: Path) -> None:
    assert path.is_file(), f"{_rel(path)} is missing"
    assert path.read_text(encoding="utf-8").strip(), f"{_rel(path)} is empty"


@pytest.mark.parametrize("path", YAML_FILES, ids=_rel)
def test_yaml_has_no_tabs_or_trailing_blanks(path: Path) -> None:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        assert "\t" not in line, f"{_rel(path)}:{number}: a tab (YAML indents with spaces)"
        assert line == line.rstrip(), f"{_rel(path)}:{number}: trailing whitespace"
        indent = len(line) - len(line.lstrip(" "))
        assert indent % 2 == 0 or line.lstrip().startswith("#"), (
            f"{_rel(path)}:{number}: odd indentation"
        )


REQUIRED_STRINGS = {
    COMPOSE: [
        "dockerfile: deploy/Dockerfile",
        "- dev-upstream",
        "- 0.0.0.0",
        "condition: service_healthy",
        "RELAY_UPSTREAM__HOST: dev-upstream",
        "RELAY_MASKINPORTEN__TOKEN_URL: http://dev-upstream:8091/token",
        "RELAY_MASKINPORTEN__AUDIENCE: http://0.0.0.0:8091/",
        "RELAY_MASKINPORTEN__CLIENT_ID: MOVE_IP_991825827",
        "RELAY_MASKINPORTEN__SCOPE: eformidling:dpo",
        "/pki/leaf.key",
        "/pki/leaf.pem",
        "upstream-data:/srv/dev-upstream:ro",
        "stop_grace_period:",
    ],
    K8S: [
        "kind: Deployment",
        "path: /healthz",
        "path: /readyz",
        'prometheus.io/scrape: "true"',
        'prometheus.io/port: "8080"',
        "prometheus.io/path: /metrics",
        "terminationGracePeriodSeconds:",
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "secretName: relay-maskinporten",
        "mountPath: /etc/relay/maskinporten",
        "RELAY_MASKINPORTEN__KEYSTORE_PASSWORD_FILE",
        "emptyDir:",
        "persistentVolumeClaim",
        "requests:",
        "limits:",
    ],
    FLUENT_BIT: [
        "name: http",
        "uri: /api/status",
        "format: json_lines",
        "retry_limit: false",
        "storage.path:",
        "storage.type: filesystem",
        "header: Content-Type application/x-ndjson",
    ],
    VECTOR: [
        "type: http",
        "uri: http://127.0.0.1:8080/api/status",
        "codec: json",
        "method: newline_delimited",
        "Content-Type: application/x-ndjson",
        "type: disk",
        "when_full: block",
        "acknowledgements:\n      enabled: true",
    ],
}


@pytest.mark.parametrize("path", list(REQUIRED_STRINGS), ids=_rel)
def test_yaml_says_what_the_setup_relies_on(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    missing = [s for s in REQUIRED_STRINGS[path] if s not in text]
    assert not missing, f"{_rel(path)} lacks {missing}"


def test_forwarders_post_to_the_configured_listener() -> None:
    listen = load_config(RELAY_TOML, environ={}).ingest.http.listen
    host, port = listen.rsplit(":", 1)
    fluent = FLUENT_BIT.read_text(encoding="utf-8")
    assert f"host: {host}" in fluent and f"port: {port}" in fluent
    assert f"http://{listen}/api/status" in VECTOR.read_text(encoding="utf-8")


# ---- deploy/relay.toml ---------------------------------------------------------------------


def test_relay_toml_loads_as_production_config() -> None:
    cfg = load_config(RELAY_TOML, environ={})
    assert cfg.ingest.http.listen == "127.0.0.1:8080"  # 0.0.0.0 only in containers, by env
    assert cfg.ingest.syslog.tcp_listen.startswith("127.0.0.1:")
    assert cfg.ingest.json_lines.tcp_listen == "127.0.0.1:5044"
    assert cfg.spool.path == "/var/lib/relay"
    assert cfg.maskinporten.keystore == "/etc/relay/keystore.p12"
    assert cfg.maskinporten.client_id.startswith("MOVE_IP_")


def test_relay_toml_passes_check_config() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "relay", "check-config", "--config", str(RELAY_TOML)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "configuration is valid" in done.stderr


# ---- environment variables in the deployment files -------------------------------------------


@pytest.mark.parametrize("path", [*ENV_FILES, RELAY_TOML, README], ids=_rel)
def test_env_names_are_settings(path: Path) -> None:
    names = set(ENV_NAME.findall(path.read_text(encoding="utf-8")))
    assert names, f"{_rel(path)} names no RELAY_ settings"
    unknown = sorted(n for n in names if n not in SETTING_ENV)
    assert not unknown, f"{_rel(path)} uses {unknown}, which are not relay settings"


def _unquote(value: str) -> str:
    value = value.split(" #", 1)[0].strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _env_values(path: Path) -> dict[str, str]:
    """The RELAY_*__* values a file sets, read the way its tool reads them (comments skipped)."""
    text = path.read_text(encoding="utf-8")
    name = r"(RELAY_[A-Z_]+__[A-Z_]+)"
    if path == DOCKERFILE:
        code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
        return dict(re.findall(name + r"=(\S+)", code))
    if path == COMPOSE:
        pairs = re.findall(r"(?m)^\s+" + name + r":[ \t]*(.*)$", text)
        return {k: _unquote(v) for k, v in pairs}
    if path == SERVICE:
        pairs = re.findall(r"(?m)^Environment=" + name + r"=(.*)$", text)
        # %S is the state root, %d the credentials directory
        specifiers = {"%S": "/var/lib", "%d": "/run/credentials/relay.service"}
        values = {}
        for k, v in pairs:
            for spec, real in specifiers.items():
                v = v.replace(spec, real)
            values[k] = v
        return values
    if path == K8S:
        pairs = re.findall(r"(?m)^\s*- name: " + name + r"\s*\n\s+value: (.*)$", text)
        return {k: _unquote(v) for k, v in pairs}
    raise AssertionError(path)


@pytest.mark.parametrize("path", ENV_FILES, ids=_rel)
def test_env_values_load_on_top_of_relay_toml(path: Path) -> None:
    values = _env_values(path)
    assert values, f"no RELAY_ settings found in {_rel(path)}"
    load_config(RELAY_TOML, environ=values)  # raises ConfigError naming the bad one


def test_containers_listen_on_all_interfaces() -> None:
    for path in (DOCKERFILE, COMPOSE, K8S):
        cfg = load_config(RELAY_TOML, environ=_env_values(path))
        assert cfg.ingest.http.listen == "0.0.0.0:8080", _rel(path)


def test_compose_relay_delivers_to_the_dev_upstream_stand_ins() -> None:
    from relay.dev.upstream import UpstreamAddresses

    cfg = load_config(RELAY_TOML, environ=_env_values(COMPOSE))
    text = COMPOSE.read_text(encoding="utf-8")
    assert cfg.upstream.host == "dev-upstream" and cfg.upstream.port == 7070
    assert '- --rsocket-port\n      - "7070"' in text
    assert '- --maskinporten-port\n      - "8091"' in text
    # the stand-in's issuer (= the audience it demands) comes from its --host value, 0.0.0.0
    issuer = UpstreamAddresses("0.0.0.0", 7070, 8090, 8091).maskinporten_url + "/"
    assert cfg.maskinporten.audience == issuer
    assert cfg.maskinporten.token_url == "http://dev-upstream:8091/token"
    assert cfg.maskinporten.keystore == ""  # the image's keystore is switched off ...
    assert cfg.maskinporten.key_file == "/srv/dev-upstream/pki/leaf.key"  # ... for the PEMs
    assert cfg.maskinporten.cert_file == "/srv/dev-upstream/pki/leaf.pem"
    assert "--data\n      - /var/lib/relay" in text  # the volume mounted there is shared


def test_kubernetes_relay_settings() -> None:
    cfg = load_config(RELAY_TOML, environ=_env_values(K8S))
    assert cfg.spool.path.startswith("/var/lib/relay/")  # a directory the relay owns
    assert cfg.maskinporten.keystore == "/etc/relay/maskinporten/keystore.p12"
    assert cfg.maskinporten.keystore_password_file == "/etc/relay/maskinporten/keystore-password"
    text = K8S.read_text(encoding="utf-8")
    assert "key: keystore.p12" in text and "key: keystore-password" in text


# ---- grace periods above the relay's drain time ------------------------------------------------


def test_grace_periods_exceed_shutdown_timeout() -> None:
    drain = _shutdown_timeout()
    k8s = re.search(r"terminationGracePeriodSeconds: (\d+)", K8S.read_text(encoding="utf-8"))
    compose = re.search(r"stop_grace_period: (\S+)", COMPOSE.read_text(encoding="utf-8"))
    systemd = re.search(r"(?m)^TimeoutStopSec=(\S+)$", SERVICE.read_text(encoding="utf-8"))
    assert k8s and compose and systemd
    assert int(k8s.group(1)) > drain
    assert parse_duration(compose.group(1), "stop_grace_period") > drain
    assert parse_duration(systemd.group(1), "TimeoutStopSec") > drain


# ---- systemd ---------------------------------------------------------------------------------


def _unit_service_section() -> dict[str, list[str]]:
    entries: dict[str, list[str]] = {}
    section = None
    for line in SERVICE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            entries.setdefault(key, []).append(value)
    return entries


def test_systemd_unit_has_the_hardening() -> None:
    service = _unit_service_section()
    expected = {
        "DynamicUser": "yes",
        "StateDirectory": "relay",
        "Restart": "on-failure",
        "KillSignal": "SIGTERM",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallFilter": "@system-service",
        "CapabilityBoundingSet": "",
    }
    for key, value in expected.items():
        assert service.get(key) == [value], f"relay.service: want {key}={value}"
    assert service["ExecStart"][0].endswith(" run --config /etc/relay/relay.toml")
    assert "keystore-password:/etc/relay/keystore-password" in service["LoadCredential"]
    assert "RELAY_SPOOL__PATH=%S/relay" in service["Environment"]
    assert (
        "RELAY_MASKINPORTEN__KEYSTORE_PASSWORD_FILE=%d/keystore-password" in service["Environment"]
    )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists; point it at this checkout's relay
    program = Path(sys.executable).with_name("relay")
    if not program.exists():
        program = Path(sys.executable)
    unit = SERVICE.read_text(encoding="utf-8")
    exec_start = re.search(r"(?m)^ExecStart=(\S+)", unit)
    assert exec_start
    copy = tmp_path / "relay.service"
    copy.write_text(unit.replace(exec_start.group(1), str(program), 1), encoding="utf-8")
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    # an unknown key or a bad value is only a warning on stderr: any line about our unit fails
    ours = [ln for ln in (done.stdout + done.stderr).splitlines() if "relay.service" in ln]
    assert done.returncode == 0 and not ours, done.stdout + done.stderr


# ---- Dockerfile ------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#") or (not line.strip() and not pending):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)  # Docker silently runs invalid JSON as a shell command instead
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def test_dockerfile_essentials() -> None:
    instructions = _instructions()
    by_name: dict[str, list[str]] = {}
    for word, args in instructions:
        by_name.setdefault(word, []).append(args)

    assert by_name["ARG"] == ["PYTHON_IMAGE=python:3.12-slim"]
    user = by_name["USER"][-1].split(":")[0]
    assert user not in ("root", "0"), "the container must not run as root"
    assert by_name["VOLUME"] == ['["/var/lib/relay"]']
    assert by_name["EXPOSE"] == ["8080"]
    assert by_name["STOPSIGNAL"] == ["SIGTERM"]
    command = _exec_form(by_name["ENTRYPOINT"][-1]) + _exec_form(by_name["CMD"][-1])
    assert command == ["relay", "run", "--config", "/etc/relay/relay.toml"]
    assert "deploy/relay.toml /etc/relay/relay.toml" in by_name["COPY"]


def test_dockerfile_healthcheck_is_valid_python_on_the_listen_port() -> None:
    (check,) = [args for word, args in _instructions() if word == "HEALTHCHECK"]
    form = _exec_form(check[check.index("CMD ") + 4 :])
    assert form[:2] == ["python", "-c"]
    compile(form[2], "HEALTHCHECK", "exec")
    assert "urllib" in form[2]
    port = load_config(RELAY_TOML, environ=_env_values(DOCKERFILE)).ingest.http.listen
    assert f"http://127.0.0.1:{port.rsplit(':', 1)[1]}/healthz" in form[2]


def test_dockerfile_copy_sources_exist_in_the_build_context() -> None:
    for word, args in _instructions():
        if word != "COPY" or args.startswith("--from"):
            continue
        *sources, _target = args.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository root"


# ---- logback -----------------------------------------------------------------------------------


def test_logback_appender_points_at_the_json_lines_listener() -> None:
    root = ET.parse(LOGBACK).getroot()
    (appender,) = [
        a
        for a in root.iter("appender")
        if a.get("class") == "net.logstash.logback.appender.LogstashTcpSocketAppender"
    ]
    for child in ("destination", "keepAliveDuration", "reconnectionDelay"):
        assert appender.find(child) is not None, f"appender lacks <{child}>"
    encoder = appender.find("encoder")
    assert encoder is not None and encoder.get("class", "").endswith(
        (".LogstashEncoder", ".LoggingEventCompositeJsonEncoder")
    )
    # the default destination is relay.toml's ingest.json_lines.tcp_listen
    (prop,) = [p for p in root.iter("springProperty") if p.get("name") == "relayDestination"]
    assert appender.findtext("destination") == "${relayDestination}"
    json_lines = load_config(RELAY_TOML, environ={}).ingest.json_lines.tcp_listen
    assert prop.get("defaultValue") == json_lines
    (logger,) = [lg for lg in root.iter("logger") if lg.get("name") == "STATUS"]
    refs = [r.get("ref") for r in logger.iter("appender-ref")]
    assert appender.get("name") in refs


# ---- README ------------------------------------------------------------------------------------


def test_readme_covers_every_file() -> None:
    text = README.read_text(encoding="utf-8")
    for path in ALL_FILES:
        if path != README:
            assert path.name in text, f"deploy/README.md does not mention {path.name}"
