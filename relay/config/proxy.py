"""The rules of ``upstream.proxy`` and ``maskinporten.proxy``. Being written (issue 13)."""

from __future__ import annotations

from collections.abc import Callable

from relay.config.model import Config

__all__ = ["validate_proxies"]


def validate_proxies(cfg: Config, name: Callable[[str], str]) -> None:
    """Raise a one-line ConfigError for the first bad proxy setting."""
    return None
