"""Relay configuration: typed defaults, an optional TOML file, ``RELAY_*`` environment overrides.

The pieces live in submodules, one concept each: :mod:`~relay.config.units` (human-written
values), :mod:`~relay.config.model` (the schema), :mod:`~relay.config.loader`,
:mod:`~relay.config.validate` and :mod:`~relay.config.render`. Import from ``relay.config``.
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
    JsonLinesIngestConfig,
    LifecycleConfig,
    LogConfig,
    MaskinportenConfig,
    RetryConfig,
    SpoolConfig,
    SyslogIngestConfig,
    UpstreamConfig,
)
from relay.config.render import render_config
from relay.config.units import (
    format_duration,
    format_size,
    parse_duration,
    parse_listen,
    parse_size,
)
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
    "JsonLinesIngestConfig",
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
    "parse_duration",
    "parse_listen",
    "parse_size",
    "render_config",
    "validate_config",
]
