"""Relay configuration: typed defaults, an optional TOML file, ``RELAY_*`` environment overrides.

The pieces live in submodules, one concept each: :mod:`~relay.config.units` (human-written
values), :mod:`~relay.config.model` (the schema), :mod:`~relay.config.loader`,
:mod:`~relay.config.validate`, :mod:`~relay.config.render`, :mod:`~relay.config.urls` (server
URLs, shown without passwords) and :mod:`~relay.config.spool_options` (what the spool backend is
handed). Import from ``relay.config``.
"""

from relay.config.loader import load_config
from relay.config.model import (
    ENV_PREFIX,
    ENV_SEPARATOR,
    LOG_FORMATS,
    LOG_LEVELS,
    TRANSPORTS,
    WHEN_FULL_POLICIES,
    Config,
    HealthConfig,
    HttpIngestConfig,
    IngestConfig,
    JetStreamSpoolConfig,
    JsonLinesIngestConfig,
    LifecycleConfig,
    LogConfig,
    MaskinportenConfig,
    RelpIngestConfig,
    RetryConfig,
    SpoolConfig,
    SyslogIngestConfig,
    UpstreamConfig,
)
from relay.config.render import render_config
from relay.config.spool_options import spool_options
from relay.config.units import (
    format_duration,
    format_size,
    parse_duration,
    parse_listen,
    parse_size,
)
from relay.config.urls import mask_url
from relay.config.validate import validate_config

__all__ = [
    "ENV_PREFIX",
    "ENV_SEPARATOR",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "TRANSPORTS",
    "WHEN_FULL_POLICIES",
    "Config",
    "HealthConfig",
    "HttpIngestConfig",
    "IngestConfig",
    "JetStreamSpoolConfig",
    "JsonLinesIngestConfig",
    "RelpIngestConfig",
    "LifecycleConfig",
    "LogConfig",
    "MaskinportenConfig",
    "RetryConfig",
    "SpoolConfig",
    "SyslogIngestConfig",
    "UpstreamConfig",
    "format_duration",
    "format_size",
    "load_config",
    "mask_url",
    "parse_duration",
    "parse_listen",
    "parse_size",
    "render_config",
    "spool_options",
    "validate_config",
]
