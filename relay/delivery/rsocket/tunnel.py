"""A TCP stream to the status service through an HTTP proxy's CONNECT tunnel.

``CONNECT host:port`` goes to the proxy (with ``Proxy-Authorization`` when it needs a user); its
answer is read bounded in size and time, and on a 2xx the same stream carries RSocket, with TLS
to the status service started inside the tunnel when ``upstream.tls`` is on. A refusal becomes a
:class:`TunnelRefused` whose one-line message names the proxy (password masked) and its answer.
"""

from __future__ import annotations

import asyncio
import ssl

from relay.delivery.proxy import Proxy
from relay.errors import one_line

__all__ = ["MAX_ANSWER_HEAD", "TunnelError", "TunnelRefused", "dial", "open_tunnel"]

# A proxy's answer to CONNECT is a status line and a few headers; more is not an answer we can
# use, and a hostile or broken peer must not make us buffer without end.
MAX_ANSWER_HEAD = 64 * 1024  # also asyncio's default, so rsocket's reads see no change
_MAX_REASON = 120


class TunnelError(OSError):
    """The proxy could not be used: unreachable, silent, or an answer that is not HTTP."""


class TunnelRefused(TunnelError):
    """The proxy answered the CONNECT with something other than 2xx."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


_ADVICE = {
    407: "check the proxy user and password (upstream.proxy, upstream.proxy_password_file)",
    403: "the proxy does not allow this destination or port; ask its operator",
}


async def dial(
    host: str,
    port: int,
    *,
    tls: bool,
    proxy: Proxy | None,
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The status service's stream as the sink reaches it: directly, or through `proxy`'s
    tunnel; TLS (the system's trust store, or `ssl_context`) when `tls`. Raises OSError
    (TunnelError / TunnelRefused from a proxy), ssl.SSLError or TimeoutError."""
    context = (ssl_context or ssl.create_default_context()) if tls else None
    if proxy is not None:
        return await open_tunnel(proxy, host, port, ssl_context=context, timeout=timeout)
    async with asyncio.timeout(timeout):
        return await asyncio.open_connection(
            host, port, ssl=context, server_hostname=host if tls else None
        )


async def open_tunnel(
    proxy: Proxy,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = 10.0,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to ``host:port`` through ``proxy``; TLS inside the tunnel when ``ssl_context``.

    Everything (the TCP connect, the proxy's answer, the TLS handshake) must finish within
    ``timeout`` seconds. Raises TunnelRefused, TunnelError, OSError or ssl.SSLError."""
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            try:
                reader, writer = await asyncio.open_connection(
                    proxy.host, proxy.port, limit=MAX_ANSWER_HEAD
                )
            except OSError as exc:
                raise TunnelError(
                    f"cannot connect to the proxy {proxy.shown}: {exc.strerror or exc}"
                ) from None
            request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
            if proxy.authorization:
                request += f"Proxy-Authorization: {proxy.authorization}\r\n"
            writer.write((request + "\r\n").encode("latin-1"))
            await writer.drain()
            head = await _read_head(reader, proxy)
            _check_answer(head, proxy, target)
            if ssl_context is not None:
                await writer.start_tls(ssl_context, server_hostname=host)
    except TimeoutError:
        _abort(writer)
        raise TunnelError(
            f"the proxy {proxy.shown} gave no usable answer to CONNECT {target} "
            f"within {timeout:g} s"
        ) from None
    except BaseException:
        _abort(writer)
        raise
    return reader, writer


async def _read_head(reader: asyncio.StreamReader, proxy: Proxy) -> bytes:
    """The answer's status line and headers, up to the blank line; bounded by the reader's
    limit (MAX_ANSWER_HEAD). What follows stays in the reader: it belongs to the tunnel."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise TunnelError(
            f"the proxy {proxy.shown} answered CONNECT with more than "
            f"{MAX_ANSWER_HEAD // 1024} KiB of headers"
        ) from None
    except asyncio.IncompleteReadError as exc:
        shown = f": {one_line(exc.partial.decode('latin-1'), _MAX_REASON)!r}" if exc.partial else ""
        raise TunnelError(
            f"the proxy {proxy.shown} closed the connection before answering CONNECT{shown}"
        ) from None


def _check_answer(head: bytes, proxy: Proxy, target: str) -> None:
    status_line = head.split(b"\n", 1)[0].decode("latin-1").strip()
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise TunnelError(
            f"the proxy {proxy.shown} did not answer CONNECT {target} in HTTP: "
            f"{one_line(status_line, _MAX_REASON)!r}"
        )
    status = int(parts[1])
    if 200 <= status < 300:
        return
    reason = one_line(parts[2] if len(parts) > 2 else "", _MAX_REASON)
    answer = f"{status} {reason}".strip()
    message = f"the proxy {proxy.shown} refused CONNECT {target}: {answer}"
    advice = _ADVICE.get(status)
    if status == 407 and not proxy.user:
        advice = "it wants a user: write the proxy as http://USER@host:port with a password file"
    elif status in (502, 503, 504):
        advice = "the proxy cannot reach the status service; check upstream.host and upstream.port"
    raise TunnelRefused(f"{message}; {advice}" if advice else message, status)


def _abort(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        writer.transport.abort()
