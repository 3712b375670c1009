"""Rendering the effective configuration as TOML, without secrets."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from relay.config.errors import _toml_string
from relay.config.model import (
    _DURATION,
    _SIZE,
    _STR_LIST,
    Config,
    _get,
    _Key,
    _schema,
    _Setting,
)
from relay.config.units import format_duration, format_size
from relay.config.urls import mask_url

__all__ = ["render_config"]


def _render_value(setting: _Setting, value: Any) -> str:
    if setting.kind == _DURATION:
        return _toml_string(format_duration(value))
    if setting.kind == _SIZE:
        text = format_size(value)
        return text if text.isdigit() else _toml_string(text)
    if setting.kind == _STR_LIST:
        items = [mask_url(v) if setting.mask_userinfo else v for v in value]
        return "[" + ", ".join(_toml_string(v) for v in items) + "]"
    if setting.mask_userinfo:
        return _toml_string(mask_url(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return _toml_string(value)


def render_config(cfg: Config, environ: Mapping[str, str] | None = None) -> str:
    """Render the effective configuration as TOML that :func:`load_config` reads back equal.

    No secret is printed: files named by the configuration are never read here, passwords and
    tokens in server URLs are masked (``nats://user:***@host``; such a URL then does not read
    back equal), and for ``maskinporten.keystore_password_env`` only whether the variable is
    set is shown (checked in ``environ``, default ``os.environ``).
    """
    if environ is None:
        environ = os.environ
    _, settings = _schema()
    lines = [
        "# Effective relay configuration: defaults, then the config file, then RELAY_*__*",
        "# environment overrides. Secrets are never shown.",
    ]
    # Group by table: TOML allows each [table] header only once, whatever the field order.
    tables: dict[_Key, list[_Setting]] = {}
    for setting in settings.values():
        tables.setdefault(setting.path[:-1], []).append(setting)
    for table, members in tables.items():
        lines += ["", f"[{'.'.join(table)}]"]
        for setting in members:
            value = _get(cfg, setting.path)
            line = f"{setting.path[-1]} = {_render_value(setting, value)}"
            if setting.path == ("maskinporten", "keystore_password_env"):
                line += "  # (set)" if value and value in environ else "  # (not set)"
            lines.append(line)
    return "\n".join(lines) + "\n"
