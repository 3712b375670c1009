"""Which HTTP proxy, if any, a connection to Maskinporten or the status service goes through.

The explicit setting (``maskinporten.proxy`` / ``upstream.proxy``) wins. Without it the
environment decides, as curl reads it: ``https_proxy`` / ``HTTPS_PROXY`` for https:// targets,
``http_proxy`` / ``HTTP_PROXY`` for http:// ones, ``all_proxy`` / ``ALL_PROXY`` for either, the
lower-case form first; ``no_proxy`` / ``NO_PROXY`` lists the hosts reached directly. (curl ignores
an upper-case ``HTTP_PROXY`` because a CGI program gets it from a request header; the relay is no
CGI program, so both spellings count.) RSocket over TCP is tunnelled with CONNECT as HTTPS is, so
it uses the https variables.

Only ``http://`` proxies: the CONNECT tunnel and aiohttp both speak plain HTTP to the proxy.
(aiohttp 3.8+ can speak TLS to an https:// proxy, but for an https:// target that is TLS in TLS,
which asyncio refuses before Python 3.11 and aiohttp only warns about; the RSocket tunnel here
does not do it at all, and one proxy setting serves both.)

Credentials come from the URL's user part, the password optionally from
``*.proxy_password_file``. They go to the proxy in a ``Proxy-Authorization`` header and nowhere
else: :attr:`Proxy.shown` (the URL with the password masked) is what logs and errors print.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import aiohttp

from relay.config.model import MaskinportenConfig, UpstreamConfig
from relay.config.proxy import proxy_problem
from relay.config.urls import mask_url
from relay.errors import UserError

__all__ = [
    "Proxy",
    "ProxyProblem",
    "bypassed",
    "choose_proxy",
    "maskinporten_session",
    "parse_proxy",
    "proxied_session",
    "proxy_for_url",
    "proxy_problem",
    "rsocket_proxy",
    "section_proxy",
    "session_through",
]

log = logging.getLogger("relay.delivery.proxy")

_MAX_PASSWORD_FILE = 4096  # a password, not a document: a wrong path must not read a disk image


class ProxyProblem(UserError):
    """A proxy setting or variable the relay cannot use; the message is one line, masked."""


@dataclass(frozen=True)
class Proxy:
    host: str
    port: int
    source: str  # where it was configured: "upstream.proxy", "HTTPS_PROXY", …
    user: str = ""
    password: str = field(default="", repr=False)

    @property
    def url(self) -> str:
        """The proxy's address without credentials (what aiohttp's ``proxy=`` gets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def shown(self) -> str:
        """How logs, errors and /status name the proxy: the password never appears."""
        if not self.user:
            return self.url
        return f"http://{self.user}:***@{self.url.removeprefix('http://')}"

    @property
    def authorization(self) -> str | None:
        """The ``Proxy-Authorization`` header's value, or None without credentials."""
        if not self.user:
            return None
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode("ascii")
        return f"Basic {token}"


def parse_proxy(
    url: str, source: str, password_file: str = "", password_setting: str = ""
) -> Proxy:
    """``url`` as a Proxy; raises ProxyProblem (naming ``source``, the URL masked) if unusable.

    A ``password_file`` supplies the password for the user named in the URL."""
    problem = proxy_problem(url)
    if problem is not None:
        raise ProxyProblem(f"{source} {mask_url(url)!r} {problem}")
    parts = urlsplit(url)
    user = unquote(parts.username or "")
    password = unquote(parts.password or "")
    if password_file:
        if not user:
            raise ProxyProblem(
                f"{password_setting or 'the proxy password file'} is set but {source} "
                f"{mask_url(url)!r} names no user; write it as http://USER@host:port"
            )
        password = read_password_file(password_file, password_setting)
    return Proxy(parts.hostname, parts.port, source, user, password)


def read_password_file(path: str, setting: str) -> str:
    """The password in ``path`` (one line; the trailing newline dropped)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_PASSWORD_FILE + 1)
    except OSError as exc:
        raise ProxyProblem(
            f"cannot read {setting} {path}: {exc.strerror or exc}; fix the path or its permissions"
        ) from None
    if len(raw) > _MAX_PASSWORD_FILE:
        raise ProxyProblem(f"{setting} {path} is larger than a password; check the path")
    text = raw.decode("utf-8", "replace").rstrip("\r\n")
    if not text or "\n" in text:
        raise ProxyProblem(f"{setting} {path} must hold the password on one line")
    return text


def _env(environ: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """(variable, value) of the lower- or upper-case form of ``name``, lower-case first."""
    for variable in (name.lower(), name.upper()):
        value = environ.get(variable, "").strip()
        if value:
            return variable, value
    return None


def bypassed(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``host:port`` is reached directly by ``no_proxy``'s rules (curl's, plus ports and
    CIDR ranges): ``*`` matches all; ``example.org`` and ``.example.org`` match that host and
    every host under it; an IP address or CIDR range matches addresses in it; ``host:port``
    matches that port only."""
    host = host.strip("[]").rstrip(".").lower()
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in no_proxy.replace(" ", ",").split(","):
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        entry, entry_port = _split_port(entry)
        if entry_port is not None and entry_port != port:
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass  # a name: an address never matches it
            continue
        name = entry.lstrip("*").lstrip(".").rstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def _split_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):  # [::1]:8080 or [::1]
        inner, _, rest = entry[1:].partition("]")
        port = rest.removeprefix(":")
        return inner, int(port) if port.isdigit() else None
    if entry.count(":") == 1:  # host:port (more colons: an IPv6 address without a port)
        name, _, port = entry.partition(":")
        if port.isdigit():
            return name, int(port)
    return entry, None


def choose_proxy(
    scheme: str,
    host: str,
    port: int,
    *,
    setting: str,
    setting_name: str,
    password_file: str = "",
    password_setting: str = "",
    environ: Mapping[str, str] | None = None,
) -> Proxy | None:
    """The proxy for a connection to ``scheme://host:port``, or None for a direct one.

    ``setting`` (named ``setting_name`` in errors) wins; otherwise the environment decides.
    Raises ProxyProblem for a setting or variable that cannot be used."""
    if setting:
        return parse_proxy(setting, setting_name, password_file, password_setting)
    env = os.environ if environ is None else environ
    found = _env(env, f"{scheme}_proxy") or _env(env, "all_proxy")
    if found is None:
        return None
    no_proxy = _env(env, "no_proxy")
    if no_proxy is not None and bypassed(host, port, no_proxy[1]):
        return None
    variable, value = found
    return parse_proxy(value, f"environment variable {variable}", password_file, password_setting)


def proxy_for_url(
    url: str,
    *,
    setting: str,
    setting_name: str,
    password_file: str = "",
    password_setting: str = "",
    environ: Mapping[str, str] | None = None,
) -> Proxy | None:
    """:func:`choose_proxy` for an http:// or https:// URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower() or "https"
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        port = 443
    return choose_proxy(
        scheme,
        parts.hostname or "",
        port,
        setting=setting,
        setting_name=setting_name,
        password_file=password_file,
        password_setting=password_setting,
        environ=environ,
    )


def proxied_session(
    url: str, section: str, proxy_setting: str, password_file: str, **kwargs
) -> aiohttp.ClientSession:
    """An aiohttp session whose requests to ``url`` go through the proxy chosen for it.

    ``section`` is the settings' section ("maskinporten", "upstream")."""
    return session_through(section_proxy(url, section, proxy_setting, password_file), **kwargs)


def section_proxy(
    url: str,
    section: str,
    proxy_setting: str,
    password_file: str,
    *,
    environ: Mapping[str, str] | None = None,
    describe: bool = True,
) -> Proxy | None:
    """The proxy for ``url`` by ``section``'s settings or the environment; logs the choice
    unless ``describe`` is off (`relay doctor` says it in its own line)."""
    proxy = proxy_for_url(
        url,
        setting=proxy_setting,
        setting_name=f"{section}.proxy",
        password_file=password_file,
        password_setting=f"{section}.proxy_password_file",
        environ=environ,
    )
    if describe:
        describe_route(section, url, proxy)
    return proxy


def session_through(proxy: Proxy | None, **kwargs) -> aiohttp.ClientSession:
    """An aiohttp session whose every request goes through ``proxy`` (direct when None). It
    never reads the environment itself (``trust_env`` stays off): the choice made here holds."""
    if proxy is None:
        return aiohttp.ClientSession(**kwargs)
    with warnings.catch_warnings():
        # aiohttp 3.12+ would rather have per-request proxy_headers (the session has none of
        # its own); the session-wide proxy_auth (and BasicAuth) it deprecates work throughout
        # 3.x, and keep the proxy out of every request call
        warnings.simplefilter("ignore", DeprecationWarning)
        auth = aiohttp.BasicAuth(proxy.user, proxy.password) if proxy.user else None
        return aiohttp.ClientSession(proxy=proxy.url, proxy_auth=auth, **kwargs)


def describe_route(section: str, target: str, proxy: Proxy | None) -> None:
    """One log line when a connection goes through a proxy (a direct one is the default)."""
    if proxy is not None:
        log.info(
            "%s: connections to %s go through the proxy %s (from %s%s)",
            section,
            mask_url(target),
            proxy.shown,
            proxy.source,
            ", with basic authentication" if proxy.user else "",
        )


def rsocket_proxy(
    upstream: UpstreamConfig, environ: Mapping[str, str] | None = None
) -> Proxy | None:
    """The proxy whose CONNECT tunnel carries RSocket to ``upstream.host:port``, or None.
    A tunnel is what HTTPS uses a proxy for, so the https variables apply."""
    proxy = choose_proxy(
        "https",
        upstream.host,
        upstream.port,
        setting=upstream.proxy,
        setting_name="upstream.proxy",
        password_file=upstream.proxy_password_file,
        password_setting="upstream.proxy_password_file",
        environ=environ,
    )
    describe_route("upstream", f"{upstream.host}:{upstream.port}", proxy)
    return proxy


def maskinporten_session(cfg: MaskinportenConfig) -> aiohttp.ClientSession:
    """The session for token requests: through ``maskinporten.proxy`` or the environment's."""
    return proxied_session(cfg.token_url, "maskinporten", cfg.proxy, cfg.proxy_password_file)
