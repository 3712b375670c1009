"""The configuration schema: frozen dataclasses with typed defaults, one per TOML table.

The dataclasses below are the single source of truth: the loader, the environment mapping,
the "did you mean" suggestions and the renderer all walk ``dataclasses.fields`` (through
:func:`_schema`), so a field added to a section is immediately loadable, overridable and
printed. Every setting has a default, so ``Config()`` is a complete, valid configuration.
Import the public names from ``relay.config``; the underscored ones are for its submodules.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from relay.config.units import parse_duration, parse_size
from relay.spool.api import BACKENDS as SPOOL_BACKENDS

# The environment names of settings. Defined with the schema rather than in the loader because
# validation also needs them, to keep keystore_password_env from being read as an override.
ENV_PREFIX = "RELAY_"
# Only names with this separator are settings; plain RELAY_* names (RELAY_KEYSTORE_PASSWORD)
# are left alone because they may hold secrets that are read elsewhere.
ENV_SEPARATOR = "__"

# Field metadata key; values below say how a str/int/float field is written by humans.
_KIND = "kind"
_DURATION = "duration"
_SIZE = "size"
_LISTEN = "listen"
# A list of strings: a TOML array (or one string), or a comma-separated environment variable.
_STR_LIST = "str-list"
# A word operators write in any case ("INFO"); stored lower-case so code compares one spelling.
_CASE_INSENSITIVE = "case-insensitive"
# Field metadata key: the only values a str field may take (validation checks them all alike).
_CHOICES = "choices"
# Field metadata key: the values are URLs that may carry a password or token ("user:pw@host"):
# render_config and error messages show them through relay.config.urls.mask_url, and the
# section's repr leaves them out (a repr ends up in tracebacks and test failure diffs).
_MASK_USERINFO = "mask-userinfo"

TRANSPORTS = ("rsocket", "http")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
WHEN_FULL_POLICIES = ("reject",)


def _duration(default: str) -> float:
    return field(default=parse_duration(default, "default"), metadata={_KIND: _DURATION})


def _size(default: str) -> int:
    return field(default=parse_size(default, "default"), metadata={_KIND: _SIZE})


def _listen(default: str) -> str:
    return field(default=default, metadata={_KIND: _LISTEN})


def _str_list(*default: str, urls: bool = False) -> tuple[str, ...]:
    # a tuple, not a list: the sections are frozen and compared by value
    metadata: dict[str, Any] = {_KIND: _STR_LIST}
    if urls:
        metadata[_MASK_USERINFO] = True
    return field(default=default, metadata=metadata, repr=not urls)


def _one_of(default: str, allowed: tuple[str, ...], *, any_case: bool = False) -> str:
    metadata: dict[str, Any] = {_CHOICES: allowed}
    if any_case:
        metadata[_KIND] = _CASE_INSENSITIVE
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class HttpIngestConfig:
    """``[ingest.http]``: where producers POST events; also serves /metrics, /healthz, /readyz."""

    listen: str = _listen("127.0.0.1:8080")
    max_body_bytes: int = _size("10MiB")
    auth_token_file: str = ""
    # a request whose body has not arrived by then is answered 408 and closed (slow clients)
    read_timeout: float = _duration("30s")
    # idle keep-alive connections are closed after this long
    keepalive_timeout: float = _duration("75s")
    # open connections at once; more wait in the kernel's accept queue
    max_connections: int = 1024
    # TLS: a certificate chain and its key (PEM) turn TLS on; with tls_client_ca_file set, every
    # client must present a certificate that CA signed (mutual TLS)
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""


@dataclass(frozen=True)
class SyslogIngestConfig:
    """``[ingest.syslog]``: optional syslog listeners; an empty address means off."""

    tcp_listen: str = _listen("")
    udp_listen: str = _listen("")
    # open TCP connections at once on tcp_listen; more are refused (closed at once)
    max_connections: int = 1024
    # TLS: a certificate chain and its key (PEM) turn TLS on for tcp_listen (RFC 5425); with
    # tls_client_ca_file set, every client must present a certificate that CA signed (mutual TLS)
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""


@dataclass(frozen=True)
class JsonLinesIngestConfig:
    """``[ingest.json_lines]``: optional Logstash-style JSON lines over TCP; empty means off."""

    tcp_listen: str = _listen("")
    # open TCP connections at once; more are refused (closed at once)
    max_connections: int = 1024
    # TLS: a certificate chain and its key (PEM) turn TLS on; with tls_client_ca_file set, every
    # client must present a certificate that CA signed (mutual TLS)
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""


@dataclass(frozen=True)
class RelpIngestConfig:
    """``[ingest.relp]``: acknowledged syslog (RELP, as rsyslog's omrelp sends it); empty is off."""

    listen: str = _listen("")
    # open connections at once; more are refused (closed at once)
    max_connections: int = 1024
    # while the spool refuses, responses are held (the sender's window fills and it waits); a
    # connection held this long is closed, and the sender reconnects and resends
    refused_close_after: float = _duration("30s")
    # TLS: a certificate chain and its key (PEM) turn TLS on; with tls_client_ca_file set, every
    # client must present a certificate that CA signed (mutual TLS)
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""


@dataclass(frozen=True)
class IngestConfig:
    """``[ingest]``: how events reach the relay."""

    # events (array elements or lines) in one request; a request with more is refused whole
    # (413) before anything is stored, so a small compressed body cannot become millions of rows
    max_items_per_request: int = 10000
    # one event from any source; syslog and JSON-lines frames get room for headers around it
    max_event_bytes: int = _size("64KiB")
    http: HttpIngestConfig = field(default_factory=HttpIngestConfig)
    syslog: SyslogIngestConfig = field(default_factory=SyslogIngestConfig)
    json_lines: JsonLinesIngestConfig = field(default_factory=JsonLinesIngestConfig)
    relp: RelpIngestConfig = field(default_factory=RelpIngestConfig)


@dataclass(frozen=True)
class JetStreamSpoolConfig:
    """``[spool.jetstream]``: the NATS JetStream cluster of ``spool.backend = "jetstream"``."""

    # any reachable one will do; the client learns the rest of the cluster from it
    servers: tuple[str, ...] = _str_list("nats://127.0.0.1:4222", urls=True)
    stream: str = "RELAY_STATUS"
    subject: str = "relay.status"
    # 3 survives the loss of one server without losing or refusing anything (quorum 2 of 3)
    replicas: int = 3
    # one durable pull consumer shared by every relay on the stream
    consumer: str = "relay-delivery"
    credentials_file: str = ""
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    connect_timeout: float = _duration("5s")


@dataclass(frozen=True)
class SpoolConfig:
    """``[spool]``: the durable on-disk queue between ingest and upstream."""

    path: str = "./relay-data"
    max_bytes: int = _size("1GiB")
    when_full: str = "reject"
    dedup_window: float = _duration("24h")
    backend: str = _one_of("sqlite", tuple(SPOOL_BACKENDS))
    jetstream: JetStreamSpoolConfig = field(default_factory=JetStreamSpoolConfig)


@dataclass(frozen=True)
class UpstreamConfig:
    """``[upstream]``: the national status service events are delivered to."""

    transport: str = _one_of("rsocket", TRANSPORTS)
    host: str = "qa-meldingsutveksling.difi.no"
    port: int = 7070
    tls: bool = False
    route: str = "log-fire"
    http_url: str = "https://qa-meldingsutveksling.difi.no/logging/api/status"
    max_in_flight: int = 128
    request_timeout: float = _duration("10s")
    batch_size: int = 1
    # The real service acknowledges a JSON array and then drops it: only an upstream that says
    # it understands arrays (the stand-in behind a switch) may get batch_size > 1.
    accepts_arrays: bool = False
    keepalive_interval: float = _duration("20s")
    keepalive_max_lifetime: float = _duration("90s")
    # an HTTP proxy ("http://proxy.example:3128", "http://user@proxy:3128"); wins over
    # HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the environment, which are used when it is empty
    proxy: str = field(default="", metadata={_MASK_USERINFO: True}, repr=False)
    # the password for the proxy user named in the URL, read from this file (kept out of config)
    proxy_password_file: str = ""

    @property
    def address(self) -> str:
        """Where events go, as logs and /status name it."""
        return f"{self.host}:{self.port}" if self.transport == "rsocket" else self.http_url


@dataclass(frozen=True)
class RetryConfig:
    """``[retry]``: backoff between delivery attempts and when to give up on one event."""

    initial_backoff: float = _duration("200ms")
    max_backoff: float = _duration("30s")
    max_rejections: int = 5


@dataclass(frozen=True)
class MaskinportenConfig:
    """``[maskinporten]``: OAuth2 JWT-grant client used to authenticate to the upstream."""

    token_url: str = "https://test.maskinporten.no/token"
    audience: str = "https://test.maskinporten.no/"
    client_id: str = ""
    scope: str = "eformidling:dpo"
    keystore: str = ""
    keystore_password_env: str = "RELAY_KEYSTORE_PASSWORD"
    keystore_password_file: str = ""
    key_file: str = ""
    cert_file: str = ""
    kid: str = ""
    # an HTTP proxy ("http://proxy.example:3128", "http://user@proxy:3128"); wins over
    # HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the environment, which are used when it is empty
    proxy: str = field(default="", metadata={_MASK_USERINFO: True}, repr=False)
    # the password for the proxy user named in the URL, read from this file (kept out of config)
    proxy_password_file: str = ""


@dataclass(frozen=True)
class LogConfig:
    """``[log]``: the relay's own logging."""

    level: str = _one_of("info", LOG_LEVELS, any_case=True)
    format: str = _one_of("text", LOG_FORMATS)


@dataclass(frozen=True)
class HealthConfig:
    """``[health]``: when ``/status`` calls the relay degraded."""

    stall_after: float = _duration("60s")


@dataclass(frozen=True)
class LifecycleConfig:
    """``[lifecycle]``: start-up and shutdown."""

    shutdown_timeout: float = _duration("10s")
    # when set, `relay run` writes its process id here (for `relay reload --pid-file`)
    pid_file: str = ""


@dataclass(frozen=True)
class Config:
    """The whole configuration. ``Config()`` is the all-defaults configuration."""

    ingest: IngestConfig = field(default_factory=IngestConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    maskinporten: MaskinportenConfig = field(default_factory=MaskinportenConfig)
    log: LogConfig = field(default_factory=LogConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)


_Key = tuple[str, ...]

# Settings that moved, by their old name: the old name still loads, with a warning.
_MOVED: dict[_Key, _Key] = {
    ("ingest", "http", "max_event_bytes"): ("ingest", "max_event_bytes"),
}


class _Setting(NamedTuple):
    path: _Key
    type: type
    kind: str | None
    choices: tuple[str, ...] = ()
    mask_userinfo: bool = False

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


def _walk(cls: type, prefix: _Key = ()) -> Iterator[tuple[_Key, type, dataclasses.Field[Any]]]:
    """Yield every field of ``cls`` and its nested sections, depth first, in declaration order."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = (*prefix, f.name)
        yield path, hints[f.name], f
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _walk(hints[f.name], path)


@functools.cache
def _schema() -> tuple[dict[_Key, type], dict[_Key, _Setting]]:
    sections: dict[_Key, type] = {}
    settings: dict[_Key, _Setting] = {}
    for path, hint, f in _walk(Config):
        if dataclasses.is_dataclass(hint):
            sections[path] = hint
        else:
            settings[path] = _Setting(
                path,
                hint,
                f.metadata.get(_KIND),
                f.metadata.get(_CHOICES, ()),
                f.metadata.get(_MASK_USERINFO, False),
            )
    return sections, settings


def _get(cfg: Config, path: _Key) -> Any:
    value: Any = cfg
    for part in path:
        value = getattr(value, part)
    return value
