"""The deployment examples in deploy/: present, consistent with the relay and with each other.

No Docker, Kubernetes, Fluent Bit or Vector here. The YAML files are parsed and checked for what
they mean: the Kubernetes probes and the Prometheus annotation hit paths a running relay serves,
on the port the container listens on; the forwarders POST where the relay takes events, in a
form it accepts; the compose services reach each other on the ports the stand-ins are told to
listen on. Every RELAY_<SECTION>__<KEY> variable the files set names a real setting and, with
the values the files give it, loads on top of deploy/relay.toml. The systemd unit passes
`systemd-analyze verify` (where installed) and its ExecStart, with its environment and
credentials, starts a relay (e2e); the compose trial delivers an event end to end (e2e). The
Dockerfile's exec forms are valid JSON and its COPY sources exist.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import typing
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import orjson
import pytest
import yaml

from relay.config import Config, load_config, parse_duration
from tests.helpers import RelayProcess, UpstreamProcess, inprocess_relay, make_event, wait_until

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


def _yaml(path: Path) -> typing.Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _production() -> Config:
    return load_config(RELAY_TOML, environ={})


def _port(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


# ---- a running relay, for the paths and forms the files rely on --------------------------------


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _what_the_files_expect(url: str, port: int) -> list[str]:
    """What a relay at `url` (its HTTP listener on `port`) fails of the files' expectations: the
    Kubernetes probes and the Prometheus scrape (GET, 200), the forwarders' NDJSON batches with
    their headers (200, all accepted), the image's HEALTHCHECK (exit 0)."""
    failures = []
    for what, path in _k8s_paths():
        status, body = _get(url + path)
        if status != 200:
            failures.append(f"{what}: GET {path} -> {status} {body[:80]!r}")
        elif what == "prometheus.io/path" and b"# TYPE relay_" not in body:
            failures.append(f"{what}: GET {path} is no relay metrics page")
    for what, uri, headers in _forwarders():
        body = b"\n".join(orjson.dumps(make_event()) for _ in range(2)) + b"\n"
        status, answer = _post(url + urlsplit(uri).path, body, headers)
        if status != 200 or orjson.loads(answer).get("accepted") != 2:
            failures.append(f"{what}: POST {uri} {headers} -> {status} {answer[:80]!r}")
    code = re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{port}", _healthcheck()[2])
    check = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    if check.returncode != 0:
        failures.append(f"Dockerfile HEALTHCHECK: exit {check.returncode} {check.stderr[-200:]}")
    return failures


async def test_what_the_files_expect_of_a_relay(tmp_path: Path) -> None:
    """The relay's HTTP application in this process (default settings) answers everything the
    files send it."""
    async with inprocess_relay(tmp_path) as relay:
        url = await relay.start_http()
        port = int(url.rsplit(":", 1)[1])
        # the checks make blocking requests: in a thread, while this loop serves them
        failures = await asyncio.to_thread(_what_the_files_expect, url, port)
    assert not failures, "\n".join(failures)


@pytest.mark.e2e
def test_what_the_files_expect_of_a_running_relay(tmp_path: Path) -> None:
    """The same of `relay run` (default settings, no credentials: it never delivers)."""
    relay = RelayProcess(tmp_path / "spool").start()
    try:
        failures = _what_the_files_expect(relay.url, relay.port)
    finally:
        relay.kill()
    assert not failures, "\n".join(failures)


# ---- presence and shape ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ALL_FILES, ids=_rel)
def test_file_is_there(path: Path) -> None:
    assert path.is_file(), f"{_rel(path)} is missing"
    assert path.read_text(encoding="utf-8").strip(), f"{_rel(path)} is empty"


@pytest.mark.parametrize("path", YAML_FILES, ids=_rel)
def test_yaml_parses_to_a_mapping_without_tabs_or_trailing_blanks(path: Path) -> None:
    assert isinstance(_yaml(path), dict), f"{_rel(path)} is not a YAML mapping"
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        assert "\t" not in line, f"{_rel(path)}:{number}: a tab (YAML indents with spaces)"
        assert line == line.rstrip(), f"{_rel(path)}:{number}: trailing whitespace"


# ---- docker-compose.yml ------------------------------------------------------------------------


def _compose() -> dict:
    return _yaml(COMPOSE)["services"]


def _options(command: list) -> dict[str, str]:
    """`--name value` pairs of a compose command list (after the subcommand)."""
    options, words = {}, [str(w) for w in command[1:]]
    for i, word in enumerate(words):
        if word.startswith("--"):
            options[word[2:]] = words[i + 1]
    return options


def _compose_env() -> dict[str, str]:
    return {k: str(v) for k, v in _compose()["relay"]["environment"].items()}


def _mounts(service: dict) -> dict[str, str]:
    """named volume -> where the service mounts it (":ro" dropped)."""
    return {v.split(":")[0]: v.split(":")[1] for v in service.get("volumes", [])}


def test_compose_services_build_the_image_from_deploy_dockerfile() -> None:
    for name, service in _compose().items():
        build = service["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == ROOT, f"{name}: the build context is the repository root"
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE, name
        assert service["image"] == _compose()["relay"]["image"], "one image for both"


def test_compose_relay_reaches_the_stand_ins_on_the_ports_they_listen_on() -> None:
    services = _compose()
    stand_in = services["dev-upstream"]
    assert stand_in["command"][0] == "dev-upstream"
    options = _options(stand_in["command"])
    # on the container's loopback the relay container could not reach it
    assert options["host"] == "0.0.0.0"
    cfg = load_config(RELAY_TOML, environ=_compose_env())
    assert cfg.upstream.transport == "rsocket" and not cfg.upstream.tls
    assert cfg.upstream.host == "dev-upstream" and cfg.upstream.host in services
    assert cfg.upstream.port == int(options["rsocket-port"])
    http_url = urlsplit(cfg.upstream.http_url)
    assert (http_url.hostname, http_url.port) == ("dev-upstream", int(options["http-port"]))
    token_url = urlsplit(cfg.maskinporten.token_url)
    assert (token_url.hostname, token_url.port) == (
        "dev-upstream",
        int(options["maskinporten-port"]),
    )
    # the stand-in's issuer, which it demands as the audience, is built from --host and port
    audience = urlsplit(cfg.maskinporten.audience)
    assert (audience.hostname, audience.port) == ("0.0.0.0", int(options["maskinporten-port"]))
    assert services["relay"]["depends_on"]["dev-upstream"]["condition"] == "service_healthy"
    # the client the stand-in's throwaway certificate is issued to, the scope it grants
    assert cfg.maskinporten.client_id == "MOVE_IP_991825827"
    assert cfg.maskinporten.scope == _production().maskinporten.scope


def test_compose_stand_in_is_healthy_only_once_both_listeners_answer() -> None:
    stand_in = _compose()["dev-upstream"]
    options = _options(stand_in["command"])
    test = stand_in["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    compile(test[3], "healthcheck", "exec")
    ports = {int(p) for p in re.findall(r"http://127\.0\.0\.1:(\d+)/", test[3])}
    assert ports == {int(options["http-port"]), int(options["maskinporten-port"])}


def test_compose_relay_reads_the_stand_ins_pki_from_the_shared_volume() -> None:
    services = _compose()
    data = _options(services["dev-upstream"]["command"])["data"]
    cfg = load_config(RELAY_TOML, environ=_compose_env())
    shared = [v for v, at in _mounts(services["dev-upstream"]).items() if at == data]
    assert len(shared) == 1, "the stand-in's --data is a named volume"
    (volume,) = shared
    assert f"{volume}:{_mounts(services['relay'])[volume]}:ro" in services["relay"]["volumes"]
    there = PurePosixPath(_mounts(services["relay"])[volume])
    assert cfg.maskinporten.keystore == ""  # the image's keystore is switched off for the PEMs
    for pem in (cfg.maskinporten.key_file, cfg.maskinporten.cert_file):
        inside = PurePosixPath(pem).relative_to(there)  # raises unless under the mount
        assert inside.parts[0] == "pki", pem  # where dev-upstream writes its PKI (e2e below)
    # the spool is its own volume, at the spool path
    assert _mounts(services["relay"])["spool"] == cfg.spool.path
    assert set(_yaml(COMPOSE)["volumes"]) == {"spool", volume}


def test_compose_publishes_the_listeners_on_the_hosts_loopback() -> None:
    services = _compose()
    listen = load_config(RELAY_TOML, environ=_compose_env()).ingest.http.listen
    published = {
        name: [str(p).split(":") for p in service.get("ports", [])]
        for name, service in services.items()
    }
    assert published["relay"] == [["127.0.0.1", "8080", str(_port(listen))]]
    http_port = _options(services["dev-upstream"]["command"])["http-port"]
    assert published["dev-upstream"] == [["127.0.0.1", http_port, http_port]]


@pytest.mark.e2e
def test_compose_trial_delivers_end_to_end(tmp_path: Path) -> None:
    """The stand-in runs with compose's own arguments (ports 0, data in tmp), the relay with
    compose's environment, names and container paths mapped to this machine; an event posted
    to the relay arrives at the stand-in."""
    services = _compose()
    command = [str(w) for w in services["dev-upstream"]["command"]]
    options = _options(command)
    # compose's arguments but --data and the ports, which UpstreamProcess sets
    ours = {"--data", "--rsocket-port", "--http-port", "--maskinporten-port"}
    args = [w for i, w in enumerate(command[1:], 1) if w not in ours and command[i - 1] not in ours]
    data = tmp_path / "upstream-data"
    up = UpstreamProcess(data, args=args).start()
    try:
        issuer = up.get(up.maskinporten_url + "/.well-known/oauth-authorization-server")["issuer"]
        ports = {
            options["rsocket-port"]: str(up.ports["rsocket"]),
            options["http-port"]: str(up.ports["http"]),
            options["maskinporten-port"]: str(up.ports["maskinporten"]),
        }
        shared = next(
            v for v, at in _mounts(services["dev-upstream"]).items() if at == options["data"]
        )
        mount = _mounts(services["relay"])[shared]

        def here(value: str) -> str:
            """A compose value as it reads on this machine: the service name is 127.0.0.1,
            container ports are the ports the stand-in got, the shared volume is `data`."""
            if value in ports:
                return ports[value]
            value = value.replace(mount, str(data)).replace("//dev-upstream:", "//127.0.0.1:")
            if value == "dev-upstream":
                return "127.0.0.1"
            for theirs, got in ports.items():
                value = value.replace(f":{theirs}/", f":{got}/")
            return value

        env = _compose_env()
        mapped = {k: here(v) for k, v in env.items()}
        assert mapped["RELAY_MASKINPORTEN__AUDIENCE"] == issuer
        for key in ("RELAY_MASKINPORTEN__KEY_FILE", "RELAY_MASKINPORTEN__CERT_FILE"):
            assert Path(mapped[key]).is_file(), f"dev-upstream wrote no {env[key]}"
        # the compose healthcheck, against the real stand-in
        check = services["dev-upstream"]["healthcheck"]["test"][3]
        for theirs, ours in ports.items():
            check = check.replace(f":{theirs}/", f":{ours}/")
        assert subprocess.run([sys.executable, "-c", check], timeout=30).returncode == 0
        mapped["RELAY_INGEST__HTTP__LISTEN"] = "127.0.0.1:0"
        mapped.pop("RELAY_SPOOL__PATH")
        relay = RelayProcess(tmp_path / "spool", env=mapped, config=RELAY_TOML)
        try:
            relay.start()
            event = make_event()
            status, _ = _post(
                relay.url + "/api/status", orjson.dumps(event), {"Content-Type": "application/json"}
            )
            assert status == 200
            wait_until(
                lambda: any(s["message_id"] == event["message_id"] for s in up.statuses()),
                30,
                "the event at the stand-in",
                relay.output,
            )
        finally:
            relay.kill()
        assert up.stats()["dropped"] == 0
    finally:
        up.kill()


# ---- kubernetes/relay-sidecar.yaml -------------------------------------------------------------


def _deployment() -> dict:
    (deployment,) = [d for d in yaml.safe_load_all(K8S.read_text()) if d["kind"] == "Deployment"]
    return deployment


def _sidecar() -> dict:
    pod = _deployment()["spec"]["template"]["spec"]
    (sidecar,) = [c for c in pod["initContainers"] if c["name"] == "relay"]
    return sidecar


def _k8s_env() -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in _sidecar()["env"] if "value" in e}


def _container_port(container: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return found


def test_kubernetes_relay_runs_as_a_native_sidecar() -> None:
    assert _sidecar()["restartPolicy"] == "Always"
    assert _deployment()["spec"]["strategy"]["type"] == "Recreate"
    assert _deployment()["spec"]["replicas"] == 1  # one relay per spool


@pytest.mark.parametrize("probe", ["startupProbe", "livenessProbe", "readinessProbe"])
def test_kubernetes_probes_use_the_relays_listener(probe: str) -> None:
    sidecar = _sidecar()
    get = sidecar[probe]["httpGet"]
    listen = load_config(RELAY_TOML, environ=_k8s_env()).ingest.http.listen
    assert listen.startswith("0.0.0.0:"), "the kubelet connects to the pod IP"
    assert _container_port(sidecar, get["port"]) == _port(listen)
    assert get.get("scheme", "HTTP") == "HTTP"  # the relay's listener has no TLS


def test_kubernetes_prometheus_annotations_point_at_the_listener() -> None:
    annotations = _deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"  # a string: annotations are strings
    listen = load_config(RELAY_TOML, environ=_k8s_env()).ingest.http.listen
    assert int(annotations["prometheus.io/port"]) == _port(listen)
    # the path: test_what_the_files_expect_of_a_running_relay


def _k8s_paths() -> list[tuple[str, str]]:
    """(what, path) of every GET the Kubernetes example makes of the relay."""
    sidecar = _sidecar()
    annotations = _deployment()["spec"]["template"]["metadata"]["annotations"]
    probes = [(p, sidecar[p]["httpGet"]["path"]) for p in sorted(sidecar) if p.endswith("Probe")]
    assert len(probes) == 3, probes
    return [*probes, ("prometheus.io/path", annotations["prometheus.io/path"])]


def test_kubernetes_relay_settings_and_mounts() -> None:
    sidecar = _sidecar()
    pod = _deployment()["spec"]["template"]["spec"]
    cfg = load_config(RELAY_TOML, environ=_k8s_env())
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in sidecar["volumeMounts"]}
    assert all(m["name"] in volumes for m in mounts.values()), "a mount of no volume"
    # the spool is a directory inside the spool volume, which the relay creates and owns
    spool = PurePosixPath(cfg.spool.path)
    (spool_mount,) = [m for at, m in mounts.items() if spool.is_relative_to(at)]
    assert spool != PurePosixPath(spool_mount["mountPath"])
    assert spool_mount["name"] == "spool"
    # keystore and password file come from the Secret's items, mounted read-only
    secret_dir = PurePosixPath(cfg.maskinporten.keystore).parent
    assert PurePosixPath(cfg.maskinporten.keystore_password_file).parent == secret_dir
    secret_mount = mounts[str(secret_dir)]
    assert secret_mount.get("readOnly") is True
    secret = volumes[secret_mount["name"]]["secret"]
    assert secret["secretName"] == "relay-maskinporten"
    items = {i["path"] for i in secret["items"]}
    assert items == {
        PurePosixPath(cfg.maskinporten.keystore).name,
        PurePosixPath(cfg.maskinporten.keystore_password_file).name,
    }
    # a read-only root filesystem, so SQLite's temporary files need a writable /tmp
    assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert cfg.log.format == "json"


def test_kubernetes_security_matches_the_images_user() -> None:
    uid = _dockerfile_user()
    pod = _deployment()["spec"]["template"]["spec"]
    context = _sidecar()["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == context["runAsGroup"] == uid
    assert pod["securityContext"]["fsGroup"] == uid
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]


def _bytes(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    number, unit = re.fullmatch(r"(\d+)([KMG]i)", quantity).groups()
    return int(number) * units[unit]


def test_kubernetes_resources_and_spool_room() -> None:
    resources = _sidecar()["resources"]
    assert _bytes(resources["requests"]["memory"]) <= _bytes(resources["limits"]["memory"])
    assert resources["requests"]["cpu"] and resources["limits"]["cpu"]
    pod = _deployment()["spec"]["template"]["spec"]
    (spool,) = [v for v in pod["volumes"] if v["name"] == "spool"]
    cfg = load_config(RELAY_TOML, environ=_k8s_env())
    assert _bytes(spool["emptyDir"]["sizeLimit"]) > cfg.spool.max_bytes


# ---- the forwarders ----------------------------------------------------------------------------


def test_fluent_bit_posts_ndjson_where_the_relay_listens() -> None:
    config = _yaml(FLUENT_BIT)
    (source,) = config["pipeline"]["inputs"]
    (output,) = config["pipeline"]["outputs"]
    assert output["name"] == "http" and output["match"] == source["tag"]
    listen = _production().ingest.http.listen
    assert f"{output['host']}:{output['port']}" == listen
    assert output["format"] == "json_lines"
    assert output["retry_limit"] is False, "retry forever (the default drops after one retry)"
    header, _, value = output["header"].partition(" ")
    assert (header, value) == ("Content-Type", "application/x-ndjson")
    # what was read survives a restart of Fluent Bit
    assert config["service"]["storage.path"] and source["storage.type"] == "filesystem"
    assert "storage.total_limit_size" not in output  # reaching it deletes the oldest chunks


def test_vector_posts_ndjson_where_the_relay_listens() -> None:
    config = _yaml(VECTOR)
    sink = config["sinks"]["relay"]
    assert sink["type"] == "http" and sink["method"] == "post"
    assert sink["uri"] == f"http://{_production().ingest.http.listen}/api/status"
    assert sink["encoding"]["codec"] == "json"
    assert sink["framing"]["method"] == "newline_delimited"
    assert sink["request"]["headers"]["Content-Type"] == "application/x-ndjson"
    assert sink["buffer"]["type"] == "disk" and sink["buffer"]["when_full"] == "block"
    assert sink["acknowledgements"]["enabled"] is True
    # the sink is fed, through the transforms, by the file source
    stages = {**config["sources"], **config["transforms"]}
    todo, reached = list(sink["inputs"]), set()
    while todo:
        name = todo.pop()
        reached.add(name)
        todo += stages[name].get("inputs", [])
    assert {n for n in reached if n in config["sources"]} == {"status_log"}
    assert config["sources"]["status_log"]["type"] == "file"


def _forwarders() -> list[tuple[str, str, dict[str, str]]]:
    """(what, uri, headers) of the forwarders' POSTs to the relay."""
    (fluent,) = _yaml(FLUENT_BIT)["pipeline"]["outputs"]
    header, _, value = fluent["header"].partition(" ")
    fluent_uri = f"http://{fluent['host']}:{fluent['port']}{fluent['uri']}"
    vector = _yaml(VECTOR)["sinks"]["relay"]
    return [
        ("fluent-bit", fluent_uri, {header: value}),
        ("vector", vector["uri"], dict(vector["request"]["headers"])),
    ]


# ---- deploy/relay.toml ---------------------------------------------------------------------


def test_relay_toml_loads_as_production_config() -> None:
    cfg = _production()
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


# %S is the state root, %d the credentials directory
SYSTEMD_SPECIFIERS = {"%S": "/var/lib", "%d": "/run/credentials/relay.service"}


def _env_values(path: Path, specifiers: dict[str, str] = SYSTEMD_SPECIFIERS) -> dict[str, str]:
    """The RELAY_*__* values a file sets, read the way its tool reads them."""
    name = r"(RELAY_[A-Z_]+__[A-Z_]+)"
    if path == DOCKERFILE:
        env = [args for word, args in _instructions() if word == "ENV"]
        return dict(re.findall(name + r"=(\S+)", " ".join(env)))
    if path == COMPOSE:
        return _compose_env()
    if path == SERVICE:
        values = {}
        for entry in _unit_service_section()["Environment"]:
            for word in shlex.split(entry):
                key, _, value = word.partition("=")
                if re.fullmatch(name, key):
                    for spec, real in specifiers.items():
                        value = value.replace(spec, real)
                    values[key] = value
        return values
    if path == K8S:
        return _k8s_env()
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


# ---- grace periods above the relay's drain time ------------------------------------------------


def test_grace_periods_exceed_shutdown_timeout() -> None:
    drain = _production().lifecycle.shutdown_timeout
    k8s = _deployment()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    compose = _compose()["relay"]["stop_grace_period"]
    (systemd,) = _unit_service_section()["TimeoutStopSec"]
    assert k8s > drain
    assert parse_duration(compose, "stop_grace_period") > drain
    assert parse_duration(systemd, "TimeoutStopSec") > drain


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


def test_systemd_unit_wires_state_and_credentials_to_the_settings() -> None:
    service = _unit_service_section()
    cfg = load_config(RELAY_TOML, environ=_env_values(SERVICE))
    # the spool is the StateDirectory (%S/relay), which systemd gives the dynamic user
    assert cfg.spool.path == "/var/lib/" + service["StateDirectory"][0]
    # every credential the settings read is one LoadCredential= hands over
    loaded = dict(c.split(":", 1) for c in service["LoadCredential"])
    creds = PurePosixPath(SYSTEMD_SPECIFIERS["%d"])
    for path in (cfg.maskinporten.keystore, cfg.maskinporten.keystore_password_file):
        assert PurePosixPath(path).parent == creds, path
        assert PurePosixPath(path).name in loaded, f"no LoadCredential= for {path}"
    # ... read from where relay.toml and deploy/README.md put them
    assert loaded["keystore.p12"] == _production().maskinporten.keystore


def _exec_start() -> list[str]:
    (line,) = _unit_service_section()["ExecStart"]
    return shlex.split(line)


def test_systemd_exec_start_runs_the_relay_with_the_installed_config() -> None:
    argv = _exec_start()
    assert PurePosixPath(argv[0]).name == "relay"
    assert argv[1:] == ["run", "--config", "/etc/relay/relay.toml"]


@pytest.mark.e2e
def test_systemd_exec_start_starts_and_stops_a_relay(tmp_path: Path) -> None:
    """ExecStart as systemd runs it: the unit's environment with %S and %d filled in, the
    credentials LoadCredential= copies, deploy/relay.toml at /etc/relay/relay.toml and this
    checkout's `relay` at /opt/relay/bin/relay. Only the outside hosts and fixed ports are
    changed, so nothing leaves this machine. It comes up, answers /healthz, keeps its spool in
    the state directory, and stops on KillSignal within TimeoutStopSec."""
    from relay.dev.certs import make_test_pki

    program = Path(sys.executable).with_name("relay")
    if not program.exists():
        pytest.skip(f"no `relay` script next to {sys.executable}")
    pki = make_test_pki(tmp_path / "pki")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    sources = {"/etc/relay/keystore.p12": pki.keystore.read_bytes()}
    sources["/etc/relay/keystore-password"] = (pki.password + "\n").encode()
    service = _unit_service_section()
    for entry in service["LoadCredential"]:
        name, source = entry.split(":", 1)
        (credentials / name).write_bytes(sources[source])
    state = tmp_path / "state"
    env = _env_values(SERVICE, {"%S": str(state), "%d": str(credentials)})
    env |= {
        "RELAY_INGEST__HTTP__LISTEN": "127.0.0.1:0",
        "RELAY_INGEST__SYSLOG__TCP_LISTEN": "127.0.0.1:0",
        "RELAY_INGEST__JSON_LINES__TCP_LISTEN": "127.0.0.1:0",
        "RELAY_UPSTREAM__HOST": "127.0.0.1",
        "RELAY_UPSTREAM__PORT": "9",
        "RELAY_UPSTREAM__HTTP_URL": "http://127.0.0.1:9/api/status",
        "RELAY_MASKINPORTEN__TOKEN_URL": "http://127.0.0.1:9/token",
        "RELAY_MASKINPORTEN__CLIENT_ID": "MOVE_IP_991825827",
    }
    argv = _exec_start()
    argv[0] = str(program)
    argv[argv.index("/etc/relay/relay.toml")] = str(RELAY_TOML)
    spool = Path(env["RELAY_SPOOL__PATH"])
    assert spool.parent == state
    spool.mkdir(parents=True, mode=int(service["StateDirectoryMode"][0], 8))  # StateDirectory=
    relay = RelayProcess(spool, env=env, command=argv)
    try:
        relay.start()
        assert _get(relay.url + "/healthz")[0] == 200
        assert (spool / "spool.db").is_file()
        relay.proc.send_signal(getattr(signal, service["KillSignal"][0]))
        (stop,) = service["TimeoutStopSec"]
        assert relay.proc.wait(parse_duration(stop, "TimeoutStopSec")) == 0, relay.output()
    finally:
        relay.kill()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists; point it at this checkout's relay
    program = Path(sys.executable).with_name("relay")
    if not program.exists():
        program = Path(sys.executable)
    unit = SERVICE.read_text(encoding="utf-8")
    copy = tmp_path / "relay.service"
    copy.write_text(unit.replace(_exec_start()[0], str(program), 1), encoding="utf-8")
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


def _dockerfile_user() -> int:
    user = [args for word, args in _instructions() if word == "USER"][-1]
    return int(user.split(":")[0])


def test_dockerfile_essentials() -> None:
    instructions = _instructions()
    by_name: dict[str, list[str]] = {}
    for word, args in instructions:
        by_name.setdefault(word, []).append(args)

    assert by_name["ARG"] == ["PYTHON_IMAGE=python:3.12-slim"]
    assert _dockerfile_user() != 0, "the container must not run as root"
    assert by_name["VOLUME"] == [json.dumps([_production().spool.path])]
    listen = load_config(RELAY_TOML, environ=_env_values(DOCKERFILE)).ingest.http.listen
    assert by_name["EXPOSE"] == [str(_port(listen))]
    assert by_name["STOPSIGNAL"] == ["SIGTERM"]
    command = _exec_form(by_name["ENTRYPOINT"][-1]) + _exec_form(by_name["CMD"][-1])
    assert command == ["relay", "run", "--config", "/etc/relay/relay.toml"]
    assert "deploy/relay.toml /etc/relay/relay.toml" in by_name["COPY"]


def _healthcheck() -> list[str]:
    (check,) = [args for word, args in _instructions() if word == "HEALTHCHECK"]
    return _exec_form(check[check.index("CMD ") + 4 :])


def test_dockerfile_healthcheck_is_valid_python_on_the_listen_port() -> None:
    form = _healthcheck()
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
    assert prop.get("defaultValue") == _production().ingest.json_lines.tcp_listen
    (logger,) = [lg for lg in root.iter("logger") if lg.get("name") == "STATUS"]
    refs = [r.get("ref") for r in logger.iter("appender-ref")]
    assert appender.get("name") in refs


# ---- README ------------------------------------------------------------------------------------


def test_readme_covers_every_file() -> None:
    text = README.read_text(encoding="utf-8")
    for path in ALL_FILES:
        if path != README:
            assert path.name in text, f"deploy/README.md does not mention {path.name}"
