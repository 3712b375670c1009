"""Validation: ranges and cross-field rules that a well-typed configuration must also meet."""

from __future__ import annotations

import re
from collections.abc import Mapping

from relay.config.errors import _error, _show, _toml_string
from relay.config.jetstream import validate_jetstream
from relay.config.listener_tls import validate_listener_tls
from relay.config.model import (
    _LISTEN,
    _SIZE,
    ENV_PREFIX,
    ENV_SEPARATOR,
    WHEN_FULL_POLICIES,
    Config,
    _get,
    _schema,
)
from relay.config.proxy import validate_proxies
from relay.config.units import format_duration, format_size, parse_listen

__all__ = ["validate_config"]


def validate_config(cfg: Config) -> None:
    """Check cross-field rules and ranges; :func:`load_config` already calls this."""
    _validate(cfg, {})


def _validate(cfg: Config, where: Mapping[str, str]) -> None:
    def name(dotted: str) -> str:
        label = where.get(dotted)
        return f"{dotted} {label}" if label else dotted

    def at_least(dotted: str, value: int, minimum: int) -> None:
        if value < minimum:
            raise _error(f"{name(dotted)} must be at least {minimum}, got {value}")

    def positive_duration(dotted: str, value: float) -> None:
        if value <= 0:
            shown = _toml_string(format_duration(value)) if value == 0 else repr(value)
            raise _error(f'{name(dotted)} must be longer than 0, e.g. "1s", got {shown}')

    _, settings = _schema()
    tcp_listeners: dict[tuple[str, int], str] = {}
    for setting in settings.values():
        value = _get(cfg, setting.path)
        dotted = setting.dotted
        if setting.choices and value not in setting.choices:
            options = ", ".join(_toml_string(a) for a in setting.choices)
            raise _error(f"{name(dotted)} must be one of {options}, got {_show(value)}")
        if setting.kind == _SIZE and value <= 0:
            raise _error(f'{name(dotted)} must be larger than 0, e.g. "64KiB", got {value}')
        if setting.kind == _LISTEN and value:
            address = parse_listen(value, name(dotted))
            # Two TCP listeners on one explicit port would fail at bind time with a much
            # less helpful message; port 0 asks the OS for a fresh port, so it never clashes.
            if not dotted.endswith("udp_listen") and address[1] != 0:
                if address in tcp_listeners:
                    raise _error(
                        f"{name(dotted)} uses {_show(value)}, which "
                        f"{tcp_listeners[address]} already listens on; pick another port"
                    )
                tcp_listeners[address] = dotted

    http = cfg.ingest.http
    if not http.listen:
        raise _error(
            f"{name('ingest.http.listen')} must not be empty; the HTTP listener also serves "
            'health checks and metrics, so give it an address such as "127.0.0.1:8080"'
        )
    max_event = cfg.ingest.max_event_bytes
    if max_event > http.max_body_bytes:
        raise _error(
            f"{name('ingest.max_event_bytes')} ({format_size(max_event)}) must not exceed "
            f"ingest.http.max_body_bytes ({format_size(http.max_body_bytes)}); raise "
            "max_body_bytes or lower max_event_bytes"
        )

    spool = cfg.spool
    if not spool.path:
        raise _error(f'{name("spool.path")} must not be empty; give a directory such as "./data"')
    if spool.when_full not in WHEN_FULL_POLICIES:
        raise _error(
            f'{name("spool.when_full")} must be "reject", got {_show(spool.when_full)}: '
            "refusing new events (503 + Retry-After) while the spool is full is the only "
            "supported policy, so accepted events are never dropped"
        )
    validate_jetstream(cfg, name)
    validate_listener_tls(cfg, name)
    validate_proxies(cfg, name)

    up = cfg.upstream
    if up.transport == "rsocket" and not up.host:
        raise _error(
            f'{name("upstream.host")} must not be empty when upstream.transport is "rsocket"'
        )
    if up.transport == "http" and not re.match(r"https?://[^/\s]+", up.http_url):
        raise _error(
            f"{name('upstream.http_url')} must be an http:// or https:// URL when "
            f'upstream.transport is "http", got {_show(up.http_url)}'
        )
    if not 1 <= up.port <= 65535:
        raise _error(f"{name('upstream.port')} must be from 1 to 65535, got {up.port}")
    at_least("upstream.max_in_flight", up.max_in_flight, 1)
    at_least("upstream.batch_size", up.batch_size, 1)
    if up.batch_size > 1 and not up.accepts_arrays:
        raise _error(
            f"{name('upstream.batch_size')} is {up.batch_size}, but the real status service "
            "acknowledges a JSON array and then drops it unread; keep batch_size = 1, or set "
            "upstream.accepts_arrays = true only for an upstream that really takes arrays"
        )
    positive_duration("upstream.request_timeout", up.request_timeout)
    positive_duration("ingest.http.read_timeout", http.read_timeout)
    positive_duration("ingest.http.keepalive_timeout", http.keepalive_timeout)
    at_least("ingest.http.max_connections", http.max_connections, 1)
    at_least("ingest.syslog.max_connections", cfg.ingest.syslog.max_connections, 1)
    at_least("ingest.json_lines.max_connections", cfg.ingest.json_lines.max_connections, 1)
    at_least("ingest.max_items_per_request", cfg.ingest.max_items_per_request, 1)
    positive_duration("upstream.keepalive_interval", up.keepalive_interval)
    if up.keepalive_max_lifetime < up.keepalive_interval:
        raise _error(
            f"{name('upstream.keepalive_max_lifetime')} "
            f"({format_duration(up.keepalive_max_lifetime)}) must be at least "
            f"upstream.keepalive_interval ({format_duration(up.keepalive_interval)}), or "
            "healthy connections are dropped between keepalives"
        )

    retry = cfg.retry
    positive_duration("retry.initial_backoff", retry.initial_backoff)
    positive_duration("health.stall_after", cfg.health.stall_after)
    if retry.initial_backoff > retry.max_backoff:
        raise _error(
            f"{name('retry.initial_backoff')} ({format_duration(retry.initial_backoff)}) must "
            f"not exceed retry.max_backoff ({format_duration(retry.max_backoff)}); raise "
            "max_backoff or lower initial_backoff"
        )
    at_least("retry.max_rejections", retry.max_rejections, 1)

    mp = cfg.maskinporten
    if mp.keystore and mp.key_file:
        raise _error(
            f"{name('maskinporten.key_file')} and maskinporten.keystore are both set; use "
            "either a PKCS#12 keystore or a PEM key_file, not both"
        )
    if mp.cert_file and not mp.key_file:
        raise _error(
            f"{name('maskinporten.cert_file')} is set without maskinporten.key_file; the "
            "certificate needs its PEM private key in key_file"
        )
    if mp.keystore_password_env.startswith(ENV_PREFIX) and ENV_SEPARATOR in (
        mp.keystore_password_env
    ):
        raise _error(
            f"{name('maskinporten.keystore_password_env')} is "
            f"{_show(mp.keystore_password_env)}, but RELAY_ names containing "
            f'"{ENV_SEPARATOR}" are read as setting overrides; choose a name without '
            f'"{ENV_SEPARATOR}", e.g. "RELAY_KEYSTORE_PASSWORD"'
        )
