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


def config_advice(cfg: Config, delivering: bool = True) -> list[Advice]:
    """What an operator should know about ``cfg``; ``delivering`` False skips upstream advice."""
    advice: list[Advice] = []
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
