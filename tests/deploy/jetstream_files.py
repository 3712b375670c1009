"""The replicated-spool examples (deploy/nats/, deploy/kubernetes/*jetstream*) as the tests of
this folder read them: paths, parsed YAML, and the NATS server configs parsed into mappings.

NATS writes its config in its own format (nats-server's `conf` package): `key: value`,
`key = value` or `key value`; blocks in braces, arrays in brackets; `#` and `//` comments;
`$NAME` for a variable (an environment variable here). `parse_nats_conf` reads the part of it
these files use, so the tests can check what the settings say; `nats-server -t` checks the
real syntax (test_nats_cluster_files.py).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from relay.config import Config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
NATS_DIR = DEPLOY / "nats"
NODE_CONFS = [NATS_DIR / f"n{i}.conf" for i in (1, 2, 3)]
NATS_COMPOSE = NATS_DIR / "docker-compose.yml"
K8S_NATS = DEPLOY / "kubernetes" / "nats-jetstream.yaml"
K8S_RELAY = DEPLOY / "kubernetes" / "relay-jetstream.yaml"
RELAY_TOML = DEPLOY / "relay.toml"
DOCKERFILE = DEPLOY / "Dockerfile"
YAML_FILES = [NATS_COMPOSE, K8S_NATS, K8S_RELAY]
ALL_FILES = [*NODE_CONFS, *YAML_FILES]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _setting_paths(cls: type = Config, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = (*prefix, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _setting_paths(hints[f.name], path)
        else:
            yield path


# every environment name the loader accepts, from the config dataclasses themselves (as
# test_deploy_files.py does for the other examples)
SETTING_ENV = {"RELAY_" + "__".join(p).upper(): ".".join(p) for p in _setting_paths()}

# `[spool.jetstream]` is issue 12's config section, written beside these files; until it is in
# relay.config the checks that load the examples' settings skip and say so
HAS_JETSTREAM_CONFIG = "RELAY_SPOOL__JETSTREAM__SERVERS" in SETTING_ENV


def yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def k8s_object(path: Path, kind: str, name: str | None = None) -> dict:
    (found,) = [
        d
        for d in yaml_docs(path)
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    return found


def compose_services() -> dict[str, dict]:
    (doc,) = yaml_docs(NATS_COMPOSE)
    return doc["services"]


def nats_services() -> dict[str, dict]:
    """The compose services that run nats-server."""
    return {n: s for n, s in compose_services().items() if s["image"].startswith("nats:")}


def relay_services() -> dict[str, dict]:
    """The compose services that run `relay run` (the image's default command)."""
    return {
        n: s
        for n, s in compose_services().items()
        if "build" in s and "command" not in s  # dev-upstream overrides the command
    }


def env_of(container: dict) -> dict[str, str]:
    """A Kubernetes container's literal environment values."""
    return {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}


def url_hosts(servers: str) -> set[tuple[str, int]]:
    """(host, port) of each URL of a comma-separated list (RELAY_SPOOL__JETSTREAM__SERVERS)."""
    return {(urlsplit(u).hostname, urlsplit(u).port) for u in servers.split(",")}


def port_of(listen: str) -> int:
    return int(str(listen).rsplit(":", 1)[1])


# ---- the NATS config format -------------------------------------------------------------------


class _Conf:
    def __init__(self, text: str, env: Mapping[str, str]) -> None:
        self.text, self.env, self.i = text, env, 0

    def _skip(self, newlines: bool = True) -> None:
        """Blanks, separators and comments (a comment starts only where a token could)."""
        blanks = " \t\r,;" + ("\n" if newlines else "")
        while self.i < len(self.text):
            c = self.text[self.i]
            if c in blanks:
                self.i += 1
            elif c == "#" or self.text.startswith("//", self.i):
                end = self.text.find("\n", self.i)
                self.i = len(self.text) if end < 0 else end
            else:
                return

    def _word(self, stops: str) -> str:
        start = self.i
        while self.i < len(self.text) and self.text[self.i] not in stops:
            self.i += 1
        if start == self.i:
            raise ValueError(
                f"nothing to read at offset {start}: {self.text[start : start + 20]!r}"
            )
        return self.text[start : self.i]

    def block(self, close: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while True:
            self._skip()
            if self.i >= len(self.text) or self.text[self.i] == close:
                if close is not None:
                    self.i += 1
                return out
            key = self._word(" \t\r\n:={")
            self._skip(newlines=False)
            if self.text[self.i] in ":=":
                self.i += 1
            self._skip(newlines=False)
            out[key] = self.value()

    def value(self) -> Any:
        c = self.text[self.i]
        if c == "{":
            self.i += 1
            return self.block("}")
        if c == "[":
            self.i += 1
            items = []
            while True:
                self._skip()
                if self.text[self.i] == "]":
                    self.i += 1
                    return items
                items.append(self.value())
        if c in "\"'":
            end = self.text.index(c, self.i + 1)
            word, self.i = self.text[self.i + 1 : end], end + 1
            return word
        word = self._word(" \t\r\n,;]}")
        if word.startswith("$"):
            return self.env[word[1:]]  # a KeyError names a variable the pod does not set
        return int(word) if word.isdigit() else word


def parse_nats_conf(text: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The settings of a NATS server config (the subset of the format these files use)."""
    return _Conf(text, env or {}).block(None)


def k8s_nats_conf_text() -> str:
    return k8s_object(K8S_NATS, "ConfigMap")["data"]["nats.conf"]


def k8s_pod_names() -> list[str]:
    sts = k8s_object(K8S_NATS, "StatefulSet")
    return [f"{sts['metadata']['name']}-{i}" for i in range(sts["spec"]["replicas"])]


def node_configs() -> dict[str, dict[str, Any]]:
    """Every NATS node the examples run, by where it comes from, as its settings: the three
    compose nodes and the three StatefulSet pods (the ConfigMap with the pod's POD_NAME)."""
    nodes = {rel(p): parse_nats_conf(p.read_text(encoding="utf-8")) for p in NODE_CONFS}
    for pod in k8s_pod_names():
        nodes[f"{rel(K8S_NATS)}:{pod}"] = parse_nats_conf(k8s_nats_conf_text(), {"POD_NAME": pod})
    return nodes
