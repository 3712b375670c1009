"""The RSocket sink: a supervised, persistent connection; one request-response per request."""

from __future__ import annotations

import asyncio
import logging
import time

from rsocket.extensions.helpers import authenticate_bearer, composite, route
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from relay import supervision
from relay.config import RetryConfig, UpstreamConfig
from relay.delivery.bearer import NO_TOKEN, TokenSource, bearer
from relay.delivery.payload import request_data, status_data
from relay.delivery.proxy import rsocket_proxy
from relay.delivery.rsocket.connection import RSocketConnection
from relay.delivery.rsocket.errors import classify
from relay.delivery.rsocket.tunnel import TunnelRefused
from relay.delivery.sink import DELIVERED, Outcome, Verdict
from relay.errors import one_line

log = logging.getLogger("relay.delivery.rsocket")

_CONNECT_TIMEOUT = 10.0
_SWEEP_EVERY = 0.5  # seconds between looks for requests past upstream.request_timeout
# A connection counts as healthy (the reconnect backoff starts over) only after it stayed up this
# long: an upstream that answers once and then drops the connection must not be redialled at once.
HEALTHY_AFTER = 30.0


class _NotUp(Exception):
    """The connect failed, or the connection ended before it counted as healthy: the reconnect
    backoff goes on growing."""


class RSocketSink:
    healthy_after = HEALTHY_AFTER  # an attribute, so that tests can shorten it

    def __init__(self, upstream: UpstreamConfig, retry: RetryConfig, tokens: TokenSource) -> None:
        self._cfg = upstream
        self._retry = retry
        self._tokens = tokens
        self._proxy = rsocket_proxy(upstream)  # raises a one-line UserError for a bad one
        self.proxy = self._proxy.shown if self._proxy else None  # for /status, masked
        self._conn: RSocketConnection | None = None
        self._ready = asyncio.Event()
        self._supervisor: asyncio.Task | None = None
        self._metadata: tuple[str, bytes] | None = None  # (token, composite metadata)
        self._last_conn: RSocketConnection | None = None  # closed on shutdown
        self._connect_failure: str | None = None  # the last one logged, until a connect succeeds
        # tokens refused one after another with no success in between: the first is replaced at
        # once; when a fresh one is refused too, the token source itself is suspect
        self._refused_token: str | None = None
        self._tokens_refused = 0
        self._problem: str | None = None  # why the upstream cannot take events (for /readyz)
        self._proxy_refusal: str | None = None  # the proxy's refusal of CONNECT, until a connect
        self.down_since: float | None = time.time()  # wall time the upstream became unreachable
        self.connects = 0
        self._stopping = False  # set by close(): no further dial, whatever swallowed a cancel

    @property
    def address(self) -> str:
        return f"{self._cfg.host}:{self._cfg.port}"

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.is_open

    def not_ready(self) -> str | None:
        return self._problem

    async def start(self) -> None:
        self._supervisor = supervision.watch(
            asyncio.create_task(self._supervise(), name="rsocket-supervisor"),
            "rsocket connection supervisor",
        )

    async def wait_ready(self) -> None:
        await self._ready.wait()
        await self._tokens.token()

    async def send(self, bodies: list[bytes]) -> Outcome:
        conn = self._conn
        if conn is None or not conn.is_open:
            return Outcome(Verdict.RETRY, "not_connected", "not connected", connection_lost=True)
        token = await bearer(self._tokens, self._cfg.request_timeout)
        if token is None:
            return Outcome(Verdict.RETRY, "token", NO_TOKEN)
        try:
            if len(bodies) == 1 and not (self._cfg.accepts_arrays and self._cfg.batch_size > 1):
                data = status_data(bodies[0])  # the real service keeps nothing else
            else:
                data = request_data(bodies, self._cfg.batch_size, self._cfg.accepts_arrays)
        except ValueError as exc:
            return Outcome(Verdict.INVALID, "not_a_status", one_line(str(exc)))
        try:
            await conn.request(data, self._metadata_for(token), self._cfg.request_timeout)
        except Exception as exc:  # every failure becomes an Outcome; nothing escapes to the loop
            outcome = classify(exc)
            if outcome.reason == "token":
                return self._token_refused(token, outcome)
            if outcome.reason == "route":
                self._problem = (
                    f"the status service has no handler for upstream.route {self._cfg.route!r} "
                    f"({outcome.error}); set upstream.route to the service's route (log-fire)"
                )
            return outcome
        if self._problem is not None or self._tokens_refused:
            self._accepted(token)
        return DELIVERED

    def _token_refused(self, token: str, outcome: Outcome) -> Outcome:
        """The upstream refused `token` (not the events). The first refused token is replaced at
        once and the events go again without delay; a fresh token refused too means the token
        source is wrong (another Maskinporten environment, a scope): back off and say so."""
        if token != self._refused_token:
            self._refused_token = token
            self._tokens_refused += 1
        self._tokens.invalidate(token)  # single flight: only the current token starts a fetch
        if self._tokens_refused <= 1:
            return Outcome(Verdict.RETRY, "token", outcome.error, retry_now=True)
        self._problem = (
            f"the status service refuses freshly fetched access tokens: {outcome.error}; "
            "check that maskinporten.token_url is the Maskinporten environment it trusts"
        )
        return outcome

    def _accepted(self, token: str) -> None:
        if self._tokens_refused:
            confirmed = getattr(self._tokens, "confirmed", None)
            if confirmed is not None:
                confirmed(token)
        if self._problem is not None:
            log.info("the status service accepts events again")
        self._tokens_refused = 0
        self._refused_token = None
        self._problem = None

    def _metadata_for(self, token: str) -> bytes:
        # the token changes once per refresh, so the metadata is built once per token
        cached = self._metadata
        if cached is None or cached[0] != token:
            cached = (token, composite(route(self._cfg.route), authenticate_bearer(token)))
            self._metadata = cached
        return cached[1]

    async def _supervise(self) -> None:
        """Keep a connection up, forever. A connection that dies before it was healthy is a
        failed attempt like a refused connect, so the backoff grows across both; one that was
        healthy is redialled at once, with the backoff started over."""
        retrying = AsyncRetrying(
            wait=wait_random_exponential(
                multiplier=self._retry.initial_backoff, max=self._retry.max_backoff
            ),
            retry=retry_if_exception_type(_NotUp),  # anything else is a bug: supervision says so
        )
        while not self._stopping:
            await retrying(self._hold_connection)

    async def _hold_connection(self) -> None:
        """Connect and serve requests until the connection ends. Raises _NotUp when the connect
        fails or the connection died before `healthy_after` (SETUP refused, an event that kills
        it, a flapping peer): such a connection must not be redialled at once, even if a request
        got through on it."""
        try:
            conn = await RSocketConnection.open(
                self._cfg.host,
                self._cfg.port,
                tls=self._cfg.tls,
                keepalive_interval=self._cfg.keepalive_interval,
                keepalive_max_lifetime=self._cfg.keepalive_max_lifetime,
                connect_timeout=_CONNECT_TIMEOUT,
                # a timed-out request fails at most a quarter of its timeout late
                sweep_every=min(_SWEEP_EVERY, self._cfg.request_timeout / 4),
                proxy=self._proxy,
            )
        except Exception as exc:  # whatever stops the connect is retried, never fatal
            failure = one_line(str(exc) or type(exc).__name__)
            if isinstance(exc, TunnelRefused):
                self._problem = self._proxy_refusal = failure  # names the proxy, masked
            if failure != self._connect_failure:
                log.warning(
                    "cannot connect to the status service at %s: %s; retrying with backoff",
                    self.address,
                    failure,
                )
                self._connect_failure = failure
            raise _NotUp(failure) from exc
        if self._stopping:
            await conn.close()
            return
        self.connects += 1
        log.info(
            "connected to the status service at %s (rsocket%s%s)",
            self.address,
            ", tls" if self._cfg.tls else "",
            f", through the proxy {self._proxy.shown}" if self._proxy else "",
        )
        self._connect_failure = None
        if self._proxy_refusal is not None and self._problem == self._proxy_refusal:
            self._problem = None
        self._proxy_refusal = None
        self._conn, self._last_conn = conn, conn
        self.down_since = None
        self._ready.set()
        started = time.monotonic()
        try:
            reason = await conn.closed
        finally:
            self._ready.clear()
            self._conn = None
            self.down_since = time.time()
        lived = time.monotonic() - started
        log.warning(
            "connection to %s lost after %.0f s: %s; reconnecting", self.address, lived, reason
        )
        await conn.close()
        if lived < self.healthy_after:
            raise _NotUp(reason)

    async def close(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            # one that died was reported by supervision: the shutdown goes on in order
            await asyncio.gather(self._supervisor, return_exceptions=True)
        if self._last_conn is not None:
            await self._last_conn.close()
