"""The rules of ``[spool.jetstream]``: what its values must look like, and what
``spool.backend = "jetstream"`` needs on this machine (nats-py, the files it names).

The section is checked whatever the backend, so that a typo is found before the day it is
switched on; the files and nats-py only matter, and are only checked, when it is the backend.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from importlib.util import find_spec

from relay.config.errors import _error, _show, _toml_string
from relay.config.model import Config
from relay.config.units import format_duration
from relay.config.urls import mask_url, nats_url_problem

__all__ = ["validate_jetstream"]

_SECTION = "spool.jetstream"
MAX_REPLICAS = 5  # JetStream's own limit on a stream's replicas
# The stream name also names the key-value bucket "<stream>_ATTEMPTS" (relay.spool.jetstream),
# and bucket names allow only these characters.
_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]+")
# JetStream names become subject tokens and file names on the servers.
_NAME_FORBIDDEN = re.compile(r"[\s.*>/\\\x00-\x1f\x7f]")
_SUBJECT_FORBIDDEN = re.compile(r"[\s*>\x00-\x1f\x7f]")


def validate_jetstream(cfg: Config, name: Callable[[str], str]) -> None:
    """Raise a one-line ConfigError for the first bad value; ``name`` adds where it was set."""
    js = cfg.spool.jetstream
    key = f"{_SECTION}.servers"
    if not js.servers:
        raise _error(
            f'{name(key)} must list at least one server, e.g. ["nats://nats-1:4222"] '
            '(or RELAY_SPOOL__JETSTREAM__SERVERS="nats://a:4222,nats://b:4222")'
        )
    for url in js.servers:
        problem = nats_url_problem(url)
        if problem:
            raise _error(
                f"{name(key)}: {_show(mask_url(url))} {problem}; write each server as "
                '"nats://host:4222" (or tls://, ws://, wss://)'
            )
    if not 1 <= js.replicas <= MAX_REPLICAS:
        raise _error(
            f"{name(f'{_SECTION}.replicas')} must be from 1 to {MAX_REPLICAS}, got {js.replicas}"
            " (3 survives the loss of one server)"
        )
    if not _STREAM_NAME.fullmatch(js.stream):
        raise _error(
            f"{name(f'{_SECTION}.stream')} must be letters, digits, _ and - only (it also names "
            f"the bucket {_toml_string(js.stream + '_ATTEMPTS')}), got {_show(js.stream)}"
        )
    if not js.consumer or _NAME_FORBIDDEN.search(js.consumer):
        raise _error(
            f"{name(f'{_SECTION}.consumer')} must be a JetStream name: not empty, without "
            f'spaces, ".", "*", ">", "/" or a backslash, got {_show(js.consumer)}'
        )
    subject = js.subject
    if _SUBJECT_FORBIDDEN.search(subject) or "" in subject.split("."):
        raise _error(
            f'{name(f"{_SECTION}.subject")} must be a NATS subject such as "relay.status": '
            f'tokens joined by ".", no spaces, no wildcards ("*", ">"), got {_show(subject)}'
        )
    if js.connect_timeout <= 0:
        raise _error(
            f'{name(f"{_SECTION}.connect_timeout")} must be longer than 0, e.g. "5s", got '
            f"{_toml_string(format_duration(js.connect_timeout))}"
        )
    if bool(js.tls_cert_file) != bool(js.tls_key_file):
        given, missing = (
            ("tls_cert_file", "tls_key_file")
            if js.tls_cert_file
            else ("tls_key_file", "tls_cert_file")
        )
        raise _error(
            f"{name(f'{_SECTION}.{given}')} is set without {_SECTION}.{missing}; mutual TLS "
            "needs both the client certificate and its private key (or neither)"
        )

    if cfg.spool.backend != "jetstream":
        return
    if find_spec("nats") is None:
        raise _error("spool.backend = \"jetstream\" needs nats-py: pip install 'relay[jetstream]'")
    for field in ("credentials_file", "tls_ca_file", "tls_cert_file", "tls_key_file"):
        path = getattr(js, field)
        # only whether it is there: the contents (keys, tokens) are read by the backend alone
        if path and not os.path.isfile(path):
            what = "is not a file" if os.path.exists(path) else "does not exist"
            raise _error(
                f"{name(f'{_SECTION}.{field}')} names {_toml_string(path)}, which {what}; "
                'fix the path, or set it to "" if it is not needed'
            )
