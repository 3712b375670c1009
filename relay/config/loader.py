"""Loading: typed defaults, then an optional TOML file, then ``RELAY_*`` environment overrides.

Precedence is defaults < config file < environment. Every setting has a default, so the relay
starts with no file at all; the file and the environment only name what differs. An override
is named ``RELAY_`` plus the setting's path joined by ``__`` (``RELAY_UPSTREAM__HOST``).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from typing import Any, NamedTuple

from relay.config.errors import _error, _show
from relay.config.model import (
    _CASE_INSENSITIVE,
    _DURATION,
    _MOVED,
    _SIZE,
    _STR_LIST,
    ENV_PREFIX,
    ENV_SEPARATOR,
    Config,
    _Key,
    _schema,
    _Setting,
)
from relay.config.units import parse_duration, parse_size
from relay.config.validate import _validate
from relay.errors import ConfigError

__all__ = ["load_config"]

log = logging.getLogger("relay.config")

_ENV_TRUE = frozenset({"true", "1", "yes"})
_ENV_FALSE = frozenset({"false", "0", "no"})


class _Origin(NamedTuple):
    label: str  # "in relay.toml" / "from environment variable RELAY_X__Y"
    from_env: bool


_Values = dict[_Key, tuple[Any, _Origin]]


def _suggest(path: _Key, candidates: list[_Key]) -> str:
    """Return " (did you mean x?)" for the nearest known name, or "" when nothing is close."""
    dotted = ".".join(path)
    names = [".".join(c) for c in candidates]
    close = difflib.get_close_matches(dotted, names, n=1, cutoff=0.6)
    if not close:
        # A right key in the wrong section ("host" at top level) is far from "upstream.host"
        # as a string but obviously meant; match on the last component.
        close = [n for n, c in zip(names, candidates, strict=True) if c[-1] == path[-1]]
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def _unknown(path: _Key, origin: _Origin, section: bool) -> ConfigError:
    sections, settings = _schema()
    what = "section" if section else "setting"
    pool = list(sections) if section else list(settings)
    hint = _suggest(path, pool) or "; relay.example.toml lists every setting"
    return _error(f"unknown {what} {'.'.join(path)} {origin.label}{hint}")


def _collect_file(table: dict[str, Any], origin: _Origin, out: _Values, prefix: _Key = ()) -> None:
    sections, settings = _schema()
    for key, value in table.items():
        path = (*prefix, key)
        dotted = ".".join(path)
        if path in sections:
            if not isinstance(value, dict):
                raise _error(
                    f"{dotted} {origin.label} must be a table ([{dotted}]), got {_show(value)}"
                )
            _collect_file(value, origin, out, path)
        elif path in settings or path in _MOVED:
            out[path] = (value, origin)
        else:
            raise _unknown(path, origin, section=isinstance(value, dict))


def _collect_env(environ: Mapping[str, str], out: _Values) -> None:
    sections, settings = _schema()
    # Sorted so that, with several bad variables, the same one is reported every time.
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or ENV_SEPARATOR not in name:
            continue
        path = tuple(name[len(ENV_PREFIX) :].lower().split(ENV_SEPARATOR))
        origin = _Origin(f"from environment variable {name}", True)
        if path in sections:
            first = next(p for p in settings if p[: len(path)] == path)
            example = ENV_PREFIX + ENV_SEPARATOR.join(first).upper()
            raise _error(
                f"environment variable {name} names the section {'.'.join(path)}, not a "
                f"setting; set one setting per variable, e.g. {example}"
            )
        if path not in settings and path not in _MOVED:
            raise _unknown(path, origin, section=False)
        out[path] = (environ[name], origin)


def _resolve_moved(values: _Values) -> _Values:
    """`values` (from one place: the file, or the environment) with old names of moved settings
    replaced by the new ones; warns once per old name, and refuses both names at odds."""
    _, settings = _schema()
    for old, new in _MOVED.items():
        if old not in values:
            continue
        raw, origin = values.pop(old)
        old_name, new_name = ".".join(old), ".".join(new)
        moved = _Origin(f"{origin.label} (as {old_name})", origin.from_env)
        if new in values:
            other_raw, other_origin = values[new]
            setting = settings[new]
            if _convert(setting, raw, moved) != _convert(setting, other_raw, other_origin):
                raise _error(
                    f"{old_name} {origin.label} ({_show(raw)}) and {new_name} "
                    f"{other_origin.label} ({_show(other_raw)}) differ; {old_name} is the old "
                    f"name of {new_name}: keep only {new_name}"
                )
        else:
            values[new] = (raw, moved)
        if origin.from_env:
            new_env = ENV_PREFIX + ENV_SEPARATOR.join(new).upper()
            instead = f"use {new_env}"
        else:
            instead = f"write it as {new[-1]} under [{'.'.join(new[:-1])}]"
        where = (
            origin.label.removeprefix("from ") if origin.from_env else f"{old_name} {origin.label}"
        )
        log.warning("%s is deprecated: %s (the setting is now %s)", where, instead, new_name)
    return values


def _convert(setting: _Setting, raw: Any, origin: _Origin) -> Any:
    key = f"{setting.dotted} {origin.label}"
    if setting.kind == _DURATION:
        return parse_duration(raw, key)
    if setting.kind == _SIZE:
        return parse_size(raw, key)
    if setting.kind == _STR_LIST:
        return _str_list(raw, key, origin)
    if setting.type is bool:
        if origin.from_env and isinstance(raw, str) and raw.strip().lower() in _ENV_TRUE:
            return True
        if origin.from_env and isinstance(raw, str) and raw.strip().lower() in _ENV_FALSE:
            return False
        if isinstance(raw, bool):
            return raw
        allowed = "true or false (or 1/0, yes/no)" if origin.from_env else "true or false"
        raise _error(f"{key} must be {allowed}, got {_show(raw)}")
    if setting.type is int:
        if origin.from_env and isinstance(raw, str) and re.fullmatch(r"\s*[+-]?\d+\s*", raw):
            return int(raw)
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        raise _error(f"{key} must be an integer, got {_show(raw)}")
    if setting.type is float:
        if origin.from_env and isinstance(raw, str):
            try:
                return float(raw)
            except ValueError:
                pass
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw)
        raise _error(f"{key} must be a number, got {_show(raw)}")
    if setting.type is str:
        if isinstance(raw, str):
            return raw.lower() if setting.kind == _CASE_INSENSITIVE else raw
        raise _error(f"{key} must be a string (in quotes), got {_show(raw)}")
    raise TypeError(f"config field {setting.dotted} has unsupported type {setting.type!r}")


def _str_list(raw: Any, key: str, origin: _Origin) -> tuple[str, ...]:
    if origin.from_env and isinstance(raw, str):
        # one variable holds the whole list: "nats://a:4222, nats://b:4222"; a trailing comma
        # or doubled one leaves an empty item, which is dropped rather than refused
        return tuple(item for item in (part.strip() for part in raw.split(",")) if item)
    if isinstance(raw, str):
        return (raw,)  # one value written without brackets
    if isinstance(raw, list):
        odd = [item for item in raw if not isinstance(item, str)]
        if not odd:
            return tuple(raw)
        # the first item that is not a string, never the strings: they may carry passwords
        got = f"an array holding {_show(odd[0])}"
    else:
        got = _show(raw)
    raise _error(f'{key} must be an array of strings (in quotes), e.g. ["a", "b"], got {got}')


def _build(cls: type, prefix: _Key, values: _Values) -> Any:
    _, settings = _schema()
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        path = (*prefix, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = _build(hints[f.name], path, values)
        elif path in values:
            raw, origin = values[path]
            kwargs[f.name] = _convert(settings[path], raw, origin)
    return cls(**kwargs)


def _read_toml(name: str) -> dict[str, Any]:
    try:
        with open(name, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise _error(f"config file {name} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise _error(f"{name} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise _error(f"{name} is not valid TOML: it is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise _error(f"cannot read config file {name}: {exc.strerror or exc}") from None


def load_config(
    path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None
) -> Config:
    """Load defaults, then the TOML file at ``path`` (if any), then ``RELAY_*__*`` overrides.

    ``environ`` defaults to ``os.environ``. The result is validated; any problem raises a
    one-line :class:`ConfigError`.
    """
    if environ is None:
        environ = os.environ
    values: _Values = {}
    if path is not None:
        name = os.fsdecode(path)
        from_file: _Values = {}
        _collect_file(_read_toml(name), _Origin(f"in {name}", False), from_file)
        values.update(_resolve_moved(from_file))
    from_env: _Values = {}
    _collect_env(environ, from_env)
    values.update(_resolve_moved(from_env))
    cfg: Config = _build(Config, (), values)
    _validate(cfg, {".".join(p): origin.label for p, (_, origin) in values.items()})
    return cfg
