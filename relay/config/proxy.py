"""The rules of ``upstream.proxy`` and ``maskinporten.proxy`` (and their password files).

Only ``http://host:port`` proxies, optionally with a user: the relay speaks plain HTTP to the
proxy (CONNECT for RSocket and https:// targets). An ``https://`` proxy (TLS to the proxy itself)
is refused: the RSocket tunnel does not speak TLS to the proxy, and aiohttp's support (3.8+)
depends on the Python version for https:// targets (TLS in TLS needs asyncio from 3.11).
The environment's ``HTTPS_PROXY`` and friends are checked when the relay starts
(relay.delivery.proxy), since they are not part of the configuration.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from urllib.parse import urlsplit

from relay.config.errors import _error
from relay.config.model import Config
from relay.config.urls import mask_url

__all__ = ["proxy_problem", "validate_proxies"]


def validate_proxies(cfg: Config, name: Callable[[str], str]) -> None:
    """Raise a one-line ConfigError for the first bad proxy setting."""
    for section, proxy, password_file in (
        ("upstream", cfg.upstream.proxy, cfg.upstream.proxy_password_file),
        ("maskinporten", cfg.maskinporten.proxy, cfg.maskinporten.proxy_password_file),
    ):
        if proxy:
            problem = proxy_problem(proxy)
            if problem is not None:
                raise _error(f"{name(f'{section}.proxy')} {mask_url(proxy)!r} {problem}")
        if not password_file:
            continue
        setting = name(f"{section}.proxy_password_file")
        if proxy and not urlsplit(proxy).username:
            raise _error(
                f"{setting} is set but {section}.proxy {mask_url(proxy)!r} names no user; "
                "write the proxy as http://USER@host:port"
            )
        if not os.path.isfile(password_file):
            raise _error(f"{setting} {password_file!r} does not exist or is not a file")
        if not os.access(password_file, os.R_OK):
            raise _error(f"{setting} {password_file!r} is not readable by this user")


def proxy_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a proxy URL (a phrase), or None when it is usable."""
    if not url.strip():
        return "is empty"
    if any(ch.isspace() for ch in url):
        return "contains spaces"
    if "://" not in url:
        return 'must start with http:// (e.g. "http://proxy.example:3128")'
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "has an invalid port (a number from 1 to 65535)"
    scheme = parts.scheme.lower()
    if scheme == "https":
        return "is an https:// proxy, which the relay does not support; use its http:// port"
    if scheme != "http":
        return f"has the scheme {scheme}://; only http:// proxies are supported"
    if not parts.hostname:
        return "has no host"
    if port is None or port == 0:
        return 'has no port; write it as "http://host:port" (e.g. 3128)'
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "must be only http://[user@]host:port (no path or query)"
    return None
