"""Reload without restart: re-read the configuration, apply what is safe, name what is not.

On SIGHUP (`relay reload`, `systemctl reload relay`) the file the relay was started with is read
again, with the same environment, and compared with the running configuration:

- applied: Maskinporten credentials and grant settings (the key, certificate or keystore files
  are re-read even when their paths did not change: a renewed certificate usually keeps its
  name), the ingest token file, the listeners' TLS certificates (re-read likewise), [log],
  [retry], health.stall_after and lifecycle.shutdown_timeout;
- named in one log line and left as they run: everything else (spool, listen addresses, the
  upstream and its transport, proxies, sizes and limits, TLS turned on or off on a listener,
  delivery turned on or off), because the sockets, the spool and the connections were built
  with them.

Everything that can fail is done first (the file parsed and validated, credentials, token and
certificates loaded); only when all of it worked is anything applied, so a broken file or a
half-renewed certificate leaves the running configuration whole and is logged as one line.
Reloads run one at a time; a SIGHUP during one runs after it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from relay.auth.credentials import Credentials, load_credentials
from relay.config import Config, load_config
from relay.delivery.setup import DeliveryParts, credentials_configured
from relay.errors import UserError, one_line
from relay.logs import apply_logging
from relay.sources.http import HttpSource, read_auth_token
from relay.sources.tls import ListenerTLS, listener_tls

__all__ = ["ConfigLoads", "Reloader", "Targets"]

log = logging.getLogger("relay.reload")

# settings a reload applies whatever else changed; the Maskinporten and TLS ones are decided
# in `_Plan` because whether they can change depends on what runs
_ALWAYS = frozenset(
    {
        "log.level",
        "log.format",
        "retry.initial_backoff",
        "retry.max_backoff",
        "retry.max_rejections",
        "health.stall_after",
        "lifecycle.shutdown_timeout",
        "ingest.http.auth_token_file",
    }
)
# the proxy is built into the token endpoint's HTTP session: a restart changes it
_MASKINPORTEN_RESTART = frozenset({"maskinporten.proxy", "maskinporten.proxy_password_file"})
_TLS_KEYS = ("tls_cert_file", "tls_key_file", "tls_client_ca_file")


@dataclass
class ConfigLoads:
    """When the configuration was loaded and how the last reload went; /status shows it."""

    path: str | None
    loaded_at: float = field(default_factory=time.time)
    reloads: int = 0
    failed_reloads: int = 0
    last_reload_at: float | None = None
    last_error: str | None = None  # of the last reload, None when it worked
    restart_needed: tuple[str, ...] = ()  # settings changed in the file but not applied

    def report(self, now: float) -> dict[str, Any]:
        return {
            "file": self.path,
            "loaded_at": _iso(self.loaded_at),
            "loaded_age_seconds": round(now - self.loaded_at, 1),
            "reloads": self.reloads,
            "failed_reloads": self.failed_reloads,
            "last_reload_at": _iso(self.last_reload_at) if self.last_reload_at else None,
            "last_reload": None
            if self.last_reload_at is None
            else ("failed" if self.last_error else "ok"),
            "last_reload_error": self.last_error,
            "restart_needed": list(self.restart_needed),
        }

    def reason(self) -> str | None:
        """A /status reason while the file on disk is not what runs because it is broken."""
        if self.last_error is None:
            return None
        return (
            f"the last configuration reload failed ({self.last_error}); running with the "
            f"configuration loaded at {_iso(self.loaded_at)}"
        )


@dataclass
class Targets:
    """The running parts a reload changes; built by `relay.server`."""

    http: HttpSource | None
    tls: dict[str, ListenerTLS | None]
    delivery: DeliveryParts | None
    set_stall_after: Callable[[float], None]
    set_shutdown_timeout: Callable[[float], None]


class Reloader:
    def __init__(
        self, path: str | None, cfg: Config, creds: Credentials | None, loads: ConfigLoads
    ) -> None:
        self.path = path
        self.cfg = cfg  # what runs: the values a reload applied, the start-up ones otherwise
        self.creds = creds  # what signs the grants now
        self.loads = loads
        self._targets: Targets | None = None
        self._lock = asyncio.Lock()
        self._pending = False
        self._tasks: set[asyncio.Task] = set()

    def attach(self, targets: Targets) -> None:
        """Start-up is done: reloads may run (one asked for during start-up runs now)."""
        self._targets = targets
        if self._pending:
            self.request()

    def detach(self) -> None:
        """Stopping: a SIGHUP from now on changes nothing (the parts are being stopped)."""
        self._targets = None

    def request(self) -> None:
        """SIGHUP: reload in the background (a signal handler cannot wait)."""
        if self._targets is None:
            self._pending = True
            return
        task = asyncio.get_running_loop().create_task(self.reload(), name="config reload")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> bool:
        """Reload once; True when the new configuration was applied (restart-only changes
        left aside), False when it was refused and the running one kept."""
        async with self._lock:
            targets = self._targets
            assert targets is not None, "reload before start-up completed"
            source = self.path or "the environment (no configuration file)"
            log.info("reloading the configuration from %s", source)
            try:
                # file reads and keystore decryption: off the event loop
                plan = await asyncio.to_thread(
                    _Plan.prepare, self.path, self.cfg, self.creds, targets
                )
            except UserError as exc:
                return self._refused(one_line(str(exc)))
            except Exception as exc:
                log.exception("configuration reload failed unexpectedly")
                return self._refused(f"unexpected {type(exc).__name__}")
            try:
                plan.apply(targets)
            except UserError as exc:
                # a certificate file changed again since it was checked; nothing else applied
                return self._refused(one_line(str(exc)))
            self.cfg = plan.effective
            self.creds = plan.creds
            self.loads.loaded_at = time.time()
            self.loads.reloads += 1
            self.loads.last_reload_at = self.loads.loaded_at
            self.loads.last_error = None
            self.loads.restart_needed = tuple(plan.restart)
            log.info("configuration reloaded from %s: %s", source, plan.summary())
            if plan.restart:
                log.warning(
                    "configuration reload: changed, but only a restart applies them (they keep "
                    "their running values until then): %s",
                    ", ".join(plan.restart),
                )
            return True

    def _refused(self, error: str) -> bool:
        self.loads.failed_reloads += 1
        self.loads.last_reload_at = time.time()
        self.loads.last_error = error
        log.error("configuration reload failed, the running configuration stays: %s", error)
        return False

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass
class _Plan:
    """A prepared reload: every file loaded, nothing applied yet."""

    old: Config
    effective: Config  # the old configuration with the applicable changes
    changed: list[str]  # applied settings that differ
    restart: list[str]
    auth_token: str | None
    creds: Credentials | None
    tls: list[str]  # sections whose certificates are reloaded
    renewed: bool  # the credentials sign differently from before

    @staticmethod
    def diff(
        old: Config, new: Config, tls: dict[str, ListenerTLS | None], *, delivering: bool
    ) -> tuple[list[str], list[str]]:
        """(applicable changed settings, restart-only changed settings)."""
        mp_ok = delivering and credentials_configured(new.maskinporten)
        applied, restart = [], []
        for key in _differences(old, new):
            section, _, name = key.rpartition(".")
            applicable = (
                key in _ALWAYS
                or (section == "maskinporten" and key not in _MASKINPORTEN_RESTART and mp_ok)
                or (name in _TLS_KEYS and section in tls and _same_tls_shape(old, new, section))
            )
            (applied if applicable else restart).append(key)
        if delivering != credentials_configured(new.maskinporten):
            # delivery is built at start-up, or not at all
            restart.append("maskinporten (delivery turned " + ("off)" if delivering else "on)"))
        return applied, restart

    @classmethod
    def prepare(
        cls, path: str | None, old: Config, creds: Credentials | None, targets: Targets
    ) -> _Plan:
        """Load and check everything the new configuration names; raises UserError."""
        new = load_config(path)
        delivering = targets.delivery is not None
        applied, restart = cls.diff(old, new, targets.tls, delivering=delivering)
        effective = old
        for key in applied:
            effective = _replace(effective, key.split("."), _get(new, key))
        auth_token = read_auth_token(effective.ingest.http.auth_token_file)
        new_creds = load_credentials(effective.maskinporten) if delivering else None
        renewed = new_creds is not None and creds is not None and not _same_signer(new_creds, creds)
        sections = []
        for section, running in targets.tls.items():
            if running is None:
                continue
            # a trial load: a broken or half-written renewal refuses the whole reload
            trial = listener_tls(section, _get(effective, section))
            assert trial is not None  # the same shape as the running one: TLS is on
            sections.append(section)
        return cls(old, effective, applied, restart, auth_token, new_creds, sections, renewed)

    def apply(self, targets: Targets) -> None:
        new = self.effective
        # first, as the only step that reads files again (each listener keeps its old
        # certificate if its new one fails to load now): a failure here leaves the rest as it was
        for section in self.tls:
            listener, files = targets.tls[section], _get(new, section)
            assert listener is not None
            listener.reload(files.tls_cert_file, files.tls_key_file, files.tls_client_ca_file)
        apply_logging(new.log.level, new.log.format)
        if targets.http is not None:
            targets.http.set_auth_token(self.auth_token)
        if targets.delivery is not None and self.creds is not None:
            fetch = self.renewed or new.maskinporten != self.old.maskinporten
            targets.delivery.tokens.replace_credentials(new.maskinporten, self.creds, fetch)
            targets.delivery.set_retry(new.retry)
        targets.set_stall_after(new.health.stall_after)
        targets.set_shutdown_timeout(new.lifecycle.shutdown_timeout)

    def summary(self) -> str:
        parts = [f"changed {', '.join(self.changed)}" if self.changed else "settings unchanged"]
        if self.creds is not None:
            when = self.creds.not_after
            valid = f", valid until {when:%Y-%m-%d}" if when else ""
            if self.renewed:
                parts.append(
                    f"Maskinporten credentials renewed ({self.creds.subject}{valid}): fetching "
                    "a new access token now, the current one stays in use until it arrives"
                )
            else:
                parts.append(f"Maskinporten credentials re-read, unchanged ({self.creds.subject})")
        if self.tls:
            parts.append(f"TLS certificates re-read for {', '.join(self.tls)}")
        if self.auth_token is not None:
            parts.append("ingest token re-read")
        elif self.old.ingest.http.auth_token_file:
            parts.append("producers are no longer asked for a token (auth_token_file is empty)")
        return "; ".join(parts)


def _differences(old: Any, new: Any, prefix: str = "") -> Iterator[str]:
    """The dotted name of every setting that differs (values may be secrets: not shown)."""
    for f in dataclasses.fields(old):
        key = f"{prefix}{f.name}"
        before, after = getattr(old, f.name), getattr(new, f.name)
        if dataclasses.is_dataclass(before):
            yield from _differences(before, after, key + ".")
        elif before != after:
            yield key


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _replace(cfg: Any, path: list[str], value: Any) -> Any:
    head, *rest = path
    inner = _replace(getattr(cfg, head), rest, value) if rest else value
    return dataclasses.replace(cfg, **{head: inner})


def _same_tls_shape(old: Config, new: Config, section: str) -> bool:
    """TLS on/off and mutual TLS on/off are fixed at start-up: only the files may change."""

    def shape(cfg: Config) -> tuple[bool, bool]:
        s = _get(cfg, section)
        return bool(s.tls_cert_file or s.tls_key_file), bool(s.tls_client_ca_file)

    return shape(old) == shape(new)


def _same_signer(a: Credentials, b: Credentials) -> bool:
    """Whether grants signed with `a` and `b` look alike to Maskinporten (same key, same chain
    or key id); Credentials' own == would compare the key objects by identity."""
    return (a.x5c, a.kid) == (b.x5c, b.kid) and (
        a.private_key.public_key().public_numbers() == b.private_key.public_key().public_numbers()
    )


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
