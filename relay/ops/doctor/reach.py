"""Can this machine reach host:port: DNS, TCP, TLS, or the proxy's tunnel — each step named.

Used for Maskinporten's token endpoint and the status service. Each step is bounded by
`timeout`. Only the connection is made: nothing is sent to the peer but a TLS handshake (and,
through a proxy, the CONNECT request the relay itself would send).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from collections.abc import Mapping
from urllib.parse import urlsplit

from relay.delivery.proxy import Proxy, section_proxy
from relay.delivery.rsocket.tunnel import TunnelError, TunnelRefused, open_tunnel
from relay.errors import one_line

__all__ = ["Unreachable", "reach", "reach_url"]


class Unreachable(Exception):
    """``str()`` says which step failed and why (one line); ``todo`` what to do about it."""

    def __init__(self, message: str, todo: str) -> None:
        super().__init__(message)
        self.todo = todo


async def reach_url(
    url: str,
    *,
    setting: str,
    section: str,
    proxy: str,
    password_file: str,
    environ: Mapping[str, str],
    timeout: float,
) -> tuple[str, Proxy | None]:
    """Reach `url`'s host as the relay's HTTP client would, through `section`'s proxy (its
    `proxy` setting, else the environment's); returns what was checked and the proxy used.
    Raises ProxyProblem (a bad proxy setting) or Unreachable."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    try:
        port = parts.port or (443 if https else 80)
    except ValueError:
        port = 443
    found = section_proxy(url, section, proxy, password_file, environ=environ, describe=False)
    done = await reach(
        parts.hostname or "",
        port,
        tls=https,
        proxy=found,
        timeout=timeout,
        setting=setting,
        tunnel=https,
    )
    return done, found


async def reach(
    host: str,
    port: int,
    *,
    tls: bool,
    proxy: Proxy | None,
    timeout: float,
    setting: str,
    tunnel: bool = True,
) -> str:
    """Connect to host:port as the relay would; returns what was checked, one line. Raises
    Unreachable. `setting` names the configuration key of the address, for the advice;
    `tunnel` False: plain HTTP through a proxy (no CONNECT), so only the proxy is dialled."""
    context = ssl.create_default_context() if tls else None
    if proxy is not None:
        return await _through_proxy(host, port, context, proxy, timeout, setting, tunnel)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except TimeoutError:
        raise Unreachable(
            f"DNS: no answer for {host} within {timeout:g} s",
            "check this machine's DNS resolver (/etc/resolv.conf)",
        ) from None
    except socket.gaierror as exc:
        raise Unreachable(
            f"DNS: cannot resolve {host}: {exc.strerror or exc}",
            f"check the host name in {setting} and this machine's DNS; where only a proxy "
            "reaches the outside, set HTTPS_PROXY or the section's proxy setting",
        ) from None
    addresses = sorted({str(info[4][0]) for info in infos})
    shown = ", ".join(addresses[:3]) + (" …" if len(addresses) > 3 else "")
    writer: asyncio.StreamWriter | None = None
    try:
        try:
            async with asyncio.timeout(timeout):
                _, writer = await asyncio.open_connection(host, port)
        except TimeoutError:
            raise Unreachable(
                f"TCP: no answer from {host}:{port} ({shown}) within {timeout:g} s",
                "a firewall drops the connection, or a proxy is needed (HTTPS_PROXY or the "
                "section's proxy setting)",
            ) from None
        except OSError as exc:
            raise Unreachable(
                f"TCP: cannot connect to {host}:{port} ({shown}): {_reason(exc)}",
                f"check {setting} (host and port) and that the service listens there; a "
                "refused connection means nothing listens on that port",
            ) from None
        done = f"DNS {host} -> {shown}; TCP {port} connected"
        if context is not None:
            await _handshake(writer, context, host, timeout)
            done += f"; TLS ok ({_tls_version(writer)})"
        return done
    finally:
        _close(writer)


async def _through_proxy(
    host: str,
    port: int,
    context: ssl.SSLContext | None,
    proxy: Proxy,
    timeout: float,
    setting: str,
    tunnel: bool,
) -> str:
    if not tunnel:
        writer = None
        try:
            async with asyncio.timeout(timeout):
                _, writer = await asyncio.open_connection(proxy.host, proxy.port)
        except (OSError, TimeoutError) as exc:
            raise Unreachable(
                f"proxy: cannot connect to {proxy.shown} (from {proxy.source}): "
                f"{getattr(exc, 'strerror', None) or exc or 'no answer'}",
                "check the proxy's address, or that it runs",
            ) from None
        finally:
            _close(writer)
        return f"proxy {proxy.shown} (from {proxy.source}) connected; it forwards requests"
    try:
        _, writer = await open_tunnel(proxy, host, port, ssl_context=context, timeout=timeout)
    except TunnelRefused as exc:
        raise Unreachable(f"proxy: {exc}", f"let the proxy reach {host}:{port}") from None
    except TunnelError as exc:
        raise Unreachable(f"proxy: {exc}", "check the proxy's address, or that it runs") from None
    except ssl.SSLError as exc:
        raise _tls_failure(host, exc) from None
    except OSError as exc:
        raise Unreachable(
            f"proxy: {proxy.shown}: {exc.strerror or exc}", f"check {setting}"
        ) from None
    version = _tls_version(writer)
    _close(writer)
    done = f"proxy {proxy.shown} (from {proxy.source}) tunnelled to {host}:{port}"
    return done + (f"; TLS ok ({version})" if context is not None else "")


async def _handshake(
    writer: asyncio.StreamWriter, context: ssl.SSLContext, host: str, timeout: float
) -> None:
    try:
        async with asyncio.timeout(timeout):
            await writer.start_tls(context, server_hostname=host)
    except TimeoutError:
        raise Unreachable(
            f"TLS: no handshake with {host} within {timeout:g} s",
            "the port may not speak TLS: check the scheme and port",
        ) from None
    except ssl.SSLError as exc:
        raise _tls_failure(host, exc) from None
    except OSError as exc:
        raise Unreachable(
            f"TLS: handshake with {host} failed: {exc.strerror or exc}",
            "the port may not speak TLS: check the scheme and port",
        ) from None


def _tls_failure(host: str, exc: ssl.SSLError) -> Unreachable:
    reason = one_line(getattr(exc, "verify_message", None) or exc.reason or str(exc), 200)
    if isinstance(exc, ssl.SSLCertVerificationError):
        todo = (
            "the certificate is not trusted here: check this machine's CA store and clock, "
            "or a TLS-inspecting proxy in the way"
        )
    else:
        todo = "the port may not speak TLS: check the scheme and port"
    return Unreachable(f"TLS: handshake with {host} failed: {reason}", todo)


def _reason(exc: OSError) -> str:
    # asyncio's "Connect call failed (...)" carries the errno, whose text says more
    return os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__


def _tls_version(writer: asyncio.StreamWriter | None) -> str:
    ssl_object = writer.get_extra_info("ssl_object") if writer is not None else None
    return ssl_object.version() if ssl_object is not None else "?"


def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        with contextlib.suppress(Exception):
            writer.transport.abort()
