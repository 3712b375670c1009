"""The relays of the replicated-spool examples: the two relay services of
deploy/nats/docker-compose.yml and the Deployment of deploy/kubernetes/relay-jetstream.yaml.

Every RELAY_<SECTION>__<KEY> they set names a real setting, and their values load on top of
deploy/relay.toml into `spool.backend = "jetstream"` with all three nodes of the cluster next
to them as servers (the names and client ports of deploy/nats/*.conf, or of the StatefulSet's
pods), as many replicas as there are nodes, and one stream and consumer shared by every relay.
The image they run has the jetstream extra. No secret is written into the examples.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest

from relay.config import load_config
from tests.deploy.jetstream_files import (
    DOCKERFILE,
    HAS_JETSTREAM_CONFIG,
    K8S_NATS,
    K8S_RELAY,
    NATS_COMPOSE,
    NATS_DIR,
    RELAY_TOML,
    ROOT,
    SETTING_ENV,
    env_of,
    k8s_nats_conf_text,
    k8s_object,
    k8s_pod_names,
    nats_services,
    parse_nats_conf,
    port_of,
    rel,
    relay_services,
    url_hosts,
)

ENV_NAME = re.compile(r"\bRELAY_[A-Z_]+__[A-Z_]+\b")

needs_jetstream_config = pytest.mark.skipif(
    not HAS_JETSTREAM_CONFIG,
    reason="relay.config has no [spool.jetstream] yet (issue 12's config section): the "
    "examples' RELAY_SPOOL__JETSTREAM__* settings cannot be loaded",
)


def _deployment() -> dict:
    return k8s_object(K8S_RELAY, "Deployment")


def _relay_container() -> dict:
    (container,) = _deployment()["spec"]["template"]["spec"]["containers"]
    return container


def _envs() -> dict[str, dict[str, str]]:
    """Each relay of the examples -> the RELAY_* values it is given."""
    envs = {
        f"{rel(NATS_COMPOSE)}:{name}": {k: str(v) for k, v in s["environment"].items()}
        for name, s in relay_services().items()
    }
    envs[rel(K8S_RELAY)] = env_of(_relay_container())
    return envs


def test_compose_has_two_relays_and_kubernetes_two_replicas() -> None:
    assert len(relay_services()) == 2
    assert _deployment()["spec"]["replicas"] == 2


@pytest.mark.parametrize("path", [NATS_COMPOSE, K8S_NATS, K8S_RELAY], ids=rel)
@needs_jetstream_config
def test_env_names_are_settings(path: Path) -> None:
    """Also the names in comments: an operator copies those too."""
    names = set(ENV_NAME.findall(path.read_text(encoding="utf-8")))
    unknown = sorted(n for n in names if n not in SETTING_ENV)
    assert not unknown, f"{rel(path)} uses {unknown}, which are not relay settings"


def test_every_relay_uses_the_jetstream_backend() -> None:
    """Without the config section: the values as the files write them."""
    for where, env in _envs().items():
        assert env["RELAY_SPOOL__BACKEND"] == "jetstream", where
        assert len(env["RELAY_SPOOL__JETSTREAM__SERVERS"].split(",")) == 3, where


@needs_jetstream_config
@pytest.mark.parametrize("where", sorted(_envs()))
def test_env_values_load_on_top_of_relay_toml(where: str) -> None:
    cfg = load_config(RELAY_TOML, environ=_envs()[where])  # a ConfigError names the bad one
    assert cfg.spool.backend == "jetstream"
    assert len(cfg.spool.jetstream.servers) == 3
    assert cfg.spool.jetstream.replicas == 3
    assert cfg.ingest.http.listen == "0.0.0.0:8080"  # in a container: reached from outside


def _compose_node_addresses() -> set[tuple[str, int]]:
    """(service name, client port) of every compose NATS node."""
    out = set()
    for name in nats_services():
        conf = parse_nats_conf((NATS_DIR / f"{name}.conf").read_text(encoding="utf-8"))
        out.add((name, port_of(conf["listen"])))
    return out


def _k8s_node_addresses() -> set[tuple[str, int]]:
    service = k8s_object(K8S_NATS, "StatefulSet")["spec"]["serviceName"]
    port = port_of(parse_nats_conf(k8s_nats_conf_text(), {"POD_NAME": "x"})["listen"])
    return {(f"{pod}.{service}", port) for pod in k8s_pod_names()}


def test_relays_name_every_node_on_its_client_port() -> None:
    for where, env in _envs().items():
        expected = _k8s_node_addresses() if where == rel(K8S_RELAY) else _compose_node_addresses()
        assert url_hosts(env["RELAY_SPOOL__JETSTREAM__SERVERS"]) == expected, where
        schemes = {urlsplit(u).scheme for u in env["RELAY_SPOOL__JETSTREAM__SERVERS"].split(",")}
        assert schemes == {"nats"}, where


def test_replicas_match_the_number_of_nodes() -> None:
    nodes = {"compose": len(nats_services()), "kubernetes": len(k8s_pod_names())}
    for where, env in _envs().items():
        n = nodes["kubernetes" if where == rel(K8S_RELAY) else "compose"]
        assert int(env.get("RELAY_SPOOL__JETSTREAM__REPLICAS", "3")) == n == 3, where


def test_the_relays_of_one_example_share_one_stream_and_consumer() -> None:
    keys = ("STREAM", "SUBJECT", "CONSUMER")
    compose = {
        tuple(env.get(f"RELAY_SPOOL__JETSTREAM__{k}") for k in keys)
        for where, env in _envs().items()
        if where != rel(K8S_RELAY)
    }
    assert len(compose) == 1, compose
    # a Deployment's replicas share everything by construction; its names must be given,
    # so that a second Deployment cannot silently drift to other defaults
    k8s = env_of(_relay_container())
    assert all(f"RELAY_SPOOL__JETSTREAM__{k}" in k8s for k in keys)


def test_no_secret_in_the_examples() -> None:
    """Credentials come from files (Secrets, volumes), never as values in the examples."""
    for where, env in _envs().items():
        for key, value in env.items():
            for url in value.split(","):
                parts = urlsplit(url.strip())
                assert not (parts.scheme and parts.password), f"{where}: {key} carries a password"
            assert not re.search(r"PASSWORD$|TOKEN$|SECRET$", key), f"{where}: {key} is a value"


def test_k8s_relay_mounts_what_its_settings_read() -> None:
    container = _relay_container()
    pod = _deployment()["spec"]["template"]["spec"]
    env = env_of(container)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for key in (
        "RELAY_INGEST__HTTP__AUTH_TOKEN_FILE",
        "RELAY_MASKINPORTEN__KEYSTORE",
        "RELAY_MASKINPORTEN__KEYSTORE_PASSWORD_FILE",
    ):
        path = PurePosixPath(env[key])
        mount = mounts[str(path.parent)]
        assert mount.get("readOnly") is True, key
        items = {i["path"] for i in volumes[mount["name"]]["secret"]["items"]}
        assert path.name in items, f"{key}: no Secret item {path.name}"
    spool = PurePosixPath(env["RELAY_SPOOL__PATH"])
    (spool_mount,) = [m for at, m in mounts.items() if spool.is_relative_to(at)]
    assert "emptyDir" in volumes[spool_mount["name"]], "nothing there the promise depends on"


def test_k8s_probes_service_and_grace_period() -> None:
    container = _relay_container()
    listen = env_of(container)["RELAY_INGEST__HTTP__LISTEN"]
    (port,) = [p for p in container["ports"] if p["containerPort"] == port_of(listen)]
    paths = {}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] == port["name"], probe
        paths[probe] = get["path"]
    assert paths == {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    service = k8s_object(K8S_RELAY, "Service")
    assert service["spec"]["selector"] == _deployment()["spec"]["selector"]["matchLabels"]
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {port["name"]}
    drain = load_config(RELAY_TOML, environ={}).lifecycle.shutdown_timeout
    assert _deployment()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain


def test_image_has_the_jetstream_extra() -> None:
    """The examples run deploy/Dockerfile's image with spool.backend = "jetstream"."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(d.startswith("nats-py") for d in extras["jetstream"])
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"pip install \"\.\[jetstream\]\"", text), "the image lacks nats-py"


def test_readmes_describe_the_examples() -> None:
    deploy = (ROOT / "deploy" / "README.md").read_text(encoding="utf-8")
    for path in (NATS_COMPOSE, K8S_NATS, K8S_RELAY, *sorted(NATS_DIR.glob("n*.conf"))):
        assert rel(path).removeprefix("deploy/") in deploy, f"deploy/README.md: {rel(path)}"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "## Outgrowing one host" in readme
    section = readme.split("## Outgrowing one host", 1)[1].split("\n## ", 1)[0]
    for needed in ("sync_interval: always", "relay spool migrate --from sqlite", "deploy/nats/"):
        assert needed in section, f"README.md, Outgrowing one host: says nothing of {needed}"
