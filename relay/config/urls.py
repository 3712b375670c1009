"""Server URLs as operators write them: which NATS URLs are valid, and how they are shown.

A NATS URL may carry a password or a token (``nats://user:pw@host:4222``, ``nats://tok@host``).
Whatever prints one (``check-config``, an error, a log line) shows it through :func:`mask_url`.
"""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["NATS_SCHEMES", "mask_url", "nats_url_problem"]

NATS_SCHEMES = ("nats", "tls", "ws", "wss")
MASK = "***"


def mask_url(url: str) -> str:
    """``url`` with its password (``user:***@``) or token (``***@``) masked; unchanged without.

    Works on malformed text too (it runs on values an error message quotes): everything up to
    the last "@" after the scheme counts as credentials, since a password may hold "/" or "@",
    and NATS URLs have no path where an "@" could mean anything else.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, host = rest.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:{MASK}" if colon else MASK
    return f"{scheme}{sep}{shown}@{host}"


def nats_url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a NATS server URL (a phrase), or None when it is fine."""
    if not url.strip():
        return "is empty"
    if any(ch.isspace() for ch in url):
        return "contains spaces"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "has an invalid port (a number from 1 to 65535)"
    if parts.scheme.lower() not in NATS_SCHEMES or "://" not in url:
        schemes = ", ".join(f"{s}://" for s in NATS_SCHEMES)
        return f"must start with one of {schemes}"
    if not parts.hostname:
        return "has no host"
    if port == 0:
        return "has an invalid port (a number from 1 to 65535)"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "must be only scheme://host:port (no path or query)"
    return None
