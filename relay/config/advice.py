"""Advice about a valid configuration: settings that work but put something at risk.

Errors stop the relay (:mod:`~relay.config.validate`); these only warn. ``check-config`` prints
them and the relay logs them once at start-up, so an operator sees them in both places.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import NamedTuple
from urllib.parse import urlsplit

from relay.config.model import Config
from relay.config.units import parse_listen

__all__ = ["Advice", "config_advice", "is_loopback_host"]


class Advice(NamedTuple):
    level: int  # a logging level: WARNING is loud, INFO is for the record
    text: str


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _clear_text_http(url: str) -> str | None:
    """The host of an ``http://`` URL that leaves this machine, else None."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return None
    return None if is_loopback_host(parts.hostname) else parts.hostname


def _jetstream_advice(replicas: int) -> list[Advice]:
    advice = []
    if replicas == 1:
        advice.append(
            Advice(
                logging.WARNING,
                "NOT REPLICATED: spool.jetstream.replicas is 1: each event is on one NATS server; "
                "losing it loses acknowledged events and stops the relay; use 3",
            )
        )
    elif replicas < 3:
        advice.append(
            Advice(
                logging.WARNING,
                f"NOT HIGHLY AVAILABLE: spool.jetstream.replicas is {replicas}: a quorum needs "
                f"{replicas // 2 + 1} of {replicas} NATS servers, so losing one stops the relay "
                "from storing events; use 3",
            )
        )
    # The relay sees only what the servers answer, not how they are set up; the promise rests
    # on a setting that lives in the servers' own configuration files.
    advice.append(
        Advice(
            logging.INFO,
            'spool.backend is "jetstream": an acknowledgement means "on disk on a quorum" '
            "only if every NATS server has jetstream { sync_interval: always }, which the relay "
            "cannot see; see deploy/nats/",
        )
    )
    return advice


def _open_listeners(cfg: Config) -> list[Advice]:
    """One warning per listener that takes plain text from other machines: bound to an address
    that is not loopback (0.0.0.0 and :: are every address) with no TLS, and, for HTTP, no
    bearer token either. Anyone on the network can then send events, or read them on the way."""
    ingest = cfg.ingest
    http = ingest.http
    listeners = [
        ("ingest.http.listen", http.listen, bool(http.tls_cert_file or http.auth_token_file)),
        ("ingest.syslog.tcp_listen", ingest.syslog.tcp_listen, bool(ingest.syslog.tls_cert_file)),
        ("ingest.syslog.udp_listen", ingest.syslog.udp_listen, False),
        (
            "ingest.json_lines.tcp_listen",
            ingest.json_lines.tcp_listen,
            bool(ingest.json_lines.tls_cert_file),
        ),
        ("ingest.relp.listen", ingest.relp.listen, bool(ingest.relp.tls_cert_file)),
    ]
    advice = []
    for setting, listen, protected in listeners:
        if not listen or protected:
            continue
        host, _ = parse_listen(listen, setting)
        if is_loopback_host(host):
            continue
        section = setting.rsplit(".", 1)[0]
        if setting.endswith("udp_listen"):
            todo = "UDP has neither TLS nor authentication: use tcp_listen with TLS, or RELP"
        elif section == "ingest.http":
            todo = f"set {section}.tls_cert_file and tls_key_file, or auth_token_file, or both"
        else:
            todo = f"set {section}.tls_cert_file and tls_key_file (and tls_client_ca_file)"
        advice.append(
            Advice(
                logging.WARNING,
                f"INSECURE: {setting} is {listen}, reachable from other machines, with no TLS"
                f"{' and no bearer token' if section == 'ingest.http' else ''}: anyone on the "
                f"network can send events and read them on the way; {todo}",
            )
        )
    return advice


def config_advice(cfg: Config, delivering: bool = True) -> list[Advice]:
    """What an operator should know about ``cfg``; ``delivering`` False skips upstream advice."""
    advice: list[Advice] = _open_listeners(cfg)
    if cfg.spool.backend == "memory":
        advice.append(
            Advice(
                logging.WARNING,
                'NOT DURABLE: spool.backend is "memory": events acknowledged to producers are '
                'lost when the relay stops; it is meant for tests; use "sqlite"',
            )
        )
    if cfg.spool.backend == "jetstream":
        advice += _jetstream_advice(cfg.spool.jetstream.replicas)
    if not delivering:
        return advice
    mp_host = _clear_text_http(cfg.maskinporten.token_url)
    if mp_host:
        advice.append(
            Advice(
                logging.WARNING,
                f"INSECURE: maskinporten.token_url is http:// to {mp_host}: the signed grant and "
                "the access token travel in clear text; use https://",
            )
        )
    up = cfg.upstream
    if up.transport == "http":
        up_host = _clear_text_http(up.http_url)
        if up_host:
            advice.append(
                Advice(
                    logging.WARNING,
                    f"INSECURE: upstream.http_url is http:// to {up_host}: access tokens and "
                    "events travel in clear text; use https://",
                )
            )
    elif not up.tls and not is_loopback_host(up.host):
        advice.append(
            Advice(
                logging.INFO,
                f"upstream {up.host}:{up.port} is plain RSocket over TCP (the real service has "
                "no TLS on 7070): tokens and events are not encrypted on the way",
            )
        )
    return advice
