"""Connecting to the NATS servers of `spool.jetstream`: TLS, credentials, reconnecting forever,
and a connection state the spool's health reads. Shared by the running relay and the CLI."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Callable
from typing import Any

import nats
from nats.aio.client import Client
from nats.errors import NoServersError

from relay.errors import UserError, one_line
from relay.spool.jetstream.options import JetStreamOptions

log = logging.getLogger("relay.spool.jetstream")

_USERINFO = re.compile(r"(?<=://)[^@/]*@")


def masked(url: str) -> str:
    """A server URL fit for a log line: any user, password or token in it replaced."""
    return _USERINFO.sub("***@", url)


def servers_text(opts: JetStreamOptions) -> str:
    return ", ".join(masked(s) for s in opts.servers)


def _tls(opts: JetStreamOptions) -> ssl.SSLContext | None:
    if not (opts.tls_ca_file or opts.tls_cert_file):
        return None
    try:
        context = ssl.create_default_context(cafile=opts.tls_ca_file or None)
        if opts.tls_cert_file:
            context.load_cert_chain(opts.tls_cert_file, opts.tls_key_file or None)
    except (OSError, ssl.SSLError) as exc:
        # the error names a file, never its contents
        raise UserError(
            f"spool.jetstream TLS files cannot be used: {one_line(str(exc))}; "
            "check tls_ca_file, tls_cert_file and tls_key_file"
        ) from None
    return context


class Connection:
    """One NATS connection that reconnects by itself; `problem` says why it is unusable now."""

    def __init__(self, opts: JetStreamOptions, on_change: Callable[[], None] | None = None) -> None:
        self.opts = opts
        self.nc: Client | None = None
        self.problem: str | None = "not connected yet"
        self._closing = False
        self._last_error: Exception | None = None
        self._on_change = on_change

    async def connect(self, *, reconnect: bool = True) -> Client:
        """Connect or raise UserError (one line) when no server answers within connect_timeout.

        With `reconnect`, a connection lost later is re-established forever in the background
        (the relay must come back by itself); without it (the CLI), a lost connection is an
        error at once."""
        opts = self.opts
        kwargs: dict[str, Any] = {
            "servers": list(opts.servers),
            "connect_timeout": opts.connect_timeout,
            "allow_reconnect": reconnect,
            # nats-py drops a server from its pool only after more than this many failures, and
            # only when it is above 0: with 0, connecting with no server up never returns
            "max_reconnect_attempts": -1 if reconnect else 1,
            "reconnect_time_wait": 0.5,
            "name": "relay",
            "disconnected_cb": self._disconnected,
            "reconnected_cb": self._reconnected,
            "error_cb": self._error,
            "closed_cb": self._closed,
            # pending output while reconnecting: bounded, and a publish beyond it fails at once
            "pending_size": 8 * 1024 * 1024,
        }
        tls = _tls(opts)
        if tls is not None:
            kwargs["tls"] = tls
        if opts.credentials_file:
            kwargs["user_credentials"] = opts.credentials_file
        try:
            # with reconnecting on, nats-py would also retry the first connect forever: a relay
            # that cannot reach any server at start-up says so instead
            async with asyncio.timeout(opts.connect_timeout * 2):
                self.nc = await nats.connect(**kwargs)
        except Exception as exc:  # nats raises plain Exceptions, timeouts and OSErrors alike
            # "no servers available" says less than why the last one failed
            cause = self._last_error if isinstance(exc, NoServersError) else None
            raise UserError(
                f"cannot connect to NATS at {servers_text(opts)}: {_why(cause or exc)}; check "
                "spool.jetstream.servers and that the servers run"
            ) from None
        self._set(None)
        return self.nc

    async def close(self) -> None:
        self._closing = True
        if self.nc is not None and not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception:  # closing anyway: nothing is waiting on this connection now
                await self.nc.close()

    def _set(self, problem: str | None) -> None:
        self.problem = problem
        if self._on_change is not None:
            self._on_change()

    async def _disconnected(self) -> None:
        if self._closing:
            return
        if self.problem is None:
            log.warning("lost the connection to NATS; reconnecting")
        self._set("lost the connection to NATS; reconnecting")

    async def _reconnected(self) -> None:
        url = self.nc.connected_url if self.nc is not None else None
        where = masked(f"{url.scheme}://{url.netloc}") if url is not None else "NATS"
        log.info("reconnected to %s", where)
        self._set(None)

    async def _error(self, exc: Exception) -> None:
        self._last_error = exc
        log.debug("NATS: %s", _why(exc))

    async def _closed(self) -> None:
        self._set("the connection to NATS is closed")


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    text = one_line(str(exc)) or type(exc).__name__
    return masked(text)
