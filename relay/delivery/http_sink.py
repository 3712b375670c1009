"""The HTTP sink: POST one event per request to the status service's `/api/status`."""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import urlsplit

import aiohttp

from relay.backoff import backoff_delay
from relay.config import RetryConfig, UpstreamConfig, mask_url
from relay.delivery.bearer import NO_TOKEN, TokenSource, bearer
from relay.delivery.payload import request_data
from relay.delivery.proxy import section_proxy, session_through
from relay.delivery.sink import DELIVERED, Outcome, Verdict
from relay.errors import one_line

log = logging.getLogger("relay.delivery.http")

_NOT_READY_STATUSES = {
    403: "check maskinporten.scope",
    404: "check upstream.http_url",
    405: "check upstream.http_url",
    407: "the proxy wants a user and password: check upstream.proxy and its password file",
}
# An error answer's body is only read this far: its first line is all a log line or /readyz shows,
# and a hostile or misconfigured upstream (a proxy's HTML page) must not make us buffer megabytes.
_MAX_ERROR_BODY = 8192


class HttpSink:
    def __init__(self, upstream: UpstreamConfig, retry: RetryConfig, tokens: TokenSource) -> None:
        self._cfg = upstream
        self._retry = retry
        self._tokens = tokens
        self._session: aiohttp.ClientSession | None = None
        self.proxy: str | None = None  # the proxy in use, as /status shows it (password masked)
        self._not_ready: str | None = None
        self.down_since: float | None = None  # wall time the upstream became unreachable
        self._failures = 0  # consecutive requests that got no answer at all
        self._last_failure = 0.0
        self._refused_at = 0.0  # monotonic time of the last answer that made us not ready

    @property
    def connected(self) -> bool:
        return self.down_since is None

    def not_ready(self) -> str | None:
        return self._not_ready

    async def start(self) -> None:
        self.down_since = time.time()  # until the first answer, the upstream is not known to work
        connector = aiohttp.TCPConnector(limit=self._cfg.max_in_flight, keepalive_timeout=60)
        # through upstream.proxy or the environment's proxy (relay.delivery.proxy)
        cfg = self._cfg
        proxy = section_proxy(cfg.http_url, "upstream", cfg.proxy, cfg.proxy_password_file)
        self.proxy = proxy.shown if proxy else None
        self._session = session_through(
            proxy,
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._cfg.request_timeout),
        )

    async def wait_ready(self) -> None:
        # while the upstream cannot be reached, probe it with backoff instead of running the whole
        # backlog into connection errors at full speed
        if self._failures:
            delay = backoff_delay(
                self._failures - 1, self._retry.initial_backoff, self._retry.max_backoff
            )
            wait = self._last_failure + delay - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        if self._not_ready:
            # fresh events would meet the same redirect or refusal: hold them back too, so the
            # request rate falls to the backoff's pace instead of one request per new event
            wait = self._refused_at + self._retry.max_backoff - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        await self._tokens.token()

    async def send(self, bodies: list[bytes]) -> Outcome:
        token = await bearer(self._tokens, self._cfg.request_timeout)
        if token is None:
            return Outcome(Verdict.RETRY, "token", NO_TOKEN)
        data = request_data(bodies, self._cfg.batch_size, self._cfg.accepts_arrays)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        try:
            # Never follow a redirect: aiohttp turns a POST answered 301/302/303 into a GET without
            # the body, whose 200 would count the event as delivered although nobody received it,
            # and a 307/308 would hand the bearer token and the event to another address.
            async with self._session.post(
                self._cfg.http_url, data=data, headers=headers, allow_redirects=False
            ) as r:
                text = await _error_text(r) if r.status >= 400 else ""
                retry_after = _retry_after(r.headers.get("Retry-After"))
                location = r.headers.get("Location")
                status = r.status
        except TimeoutError:
            self._unreachable()
            return Outcome(Verdict.RETRY, "timeout", "no answer within upstream.request_timeout")
        except aiohttp.ClientHttpProxyError as exc:  # the proxy refused CONNECT (https://)
            self._unreachable()
            target = urlsplit(self._cfg.http_url).netloc.rpartition("@")[2]
            reason = f"the proxy {mask_url(str(exc.request_info.real_url))} refused CONNECT "
            reason += f"{target}: {exc.status} {one_line(exc.message, 120)}"
            return self._refused_by_configuration(reason, Outcome(Verdict.RETRY, "proxy", reason))
        except aiohttp.ClientError as exc:
            self._unreachable()
            return Outcome(Verdict.RETRY, "connection", one_line(f"{type(exc).__name__}: {exc}"))
        self.down_since = None
        self._failures = 0
        if 300 <= status < 400:
            # a maintenance page or a proxy in the way: a configuration problem, not the events'
            where = _where(location)
            outcome = Outcome(Verdict.RETRY, f"http_{status}", f"HTTP {status} redirect to {where}")
            reason = f"the status service answers {status} (a redirect to {where}) instead of "
            reason += "accepting the event: check upstream.http_url and any proxy in the way"
            return self._refused_by_configuration(reason, outcome)
        outcome = classify_status(status, text, retry_after)
        if outcome.reason == "token":
            self._tokens.invalidate(token)
        if status in _NOT_READY_STATUSES:
            reason = f"the status service answers {status} ({outcome.error}): "
            reason += _NOT_READY_STATUSES[status]
            return self._refused_by_configuration(reason, outcome)
        if self._not_ready and outcome.verdict is Verdict.DELIVERED:
            log.warning("the status service accepts events again")
            self._not_ready = None
        return outcome

    def _refused_by_configuration(self, reason: str, outcome: Outcome) -> Outcome:
        """An answer that no retry soon can change: keep the events, say why on /readyz, and
        send again only at `retry.max_backoff`'s pace (the events, and new ones via wait_ready)."""
        if reason != self._not_ready:
            log.error("%s; events are kept and retried slowly", reason)
        self._not_ready = reason
        self._refused_at = time.monotonic()
        return Outcome(
            outcome.verdict, outcome.reason, outcome.error, retry_after=self._retry.max_backoff
        )

    def _unreachable(self) -> None:
        if self.down_since is None:
            self.down_since = time.time()
        self._failures += 1
        self._last_failure = time.monotonic()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            await asyncio.sleep(0)


def classify_status(status: int, text: str, retry_after: float | None) -> Outcome:
    """What the service's answer `status` (with `text`, its body) means for the events."""
    text = one_line(text) or f"HTTP {status}"
    if 200 <= status < 300:
        return DELIVERED
    if status in (400, 422):
        return Outcome(Verdict.INVALID, "invalid", text)
    if status == 413:
        return Outcome(Verdict.INVALID, "too_large", text)
    if status == 401:
        return Outcome(Verdict.RETRY, "token", text)
    # everything else is retried: 403/404/405 say the configuration is wrong (a missing scope, a
    # wrong URL), 408/429/5xx that the upstream is in trouble; neither is the events' fault
    return Outcome(Verdict.RETRY, f"http_{status}", text, retry_after=retry_after)


async def _error_text(r: aiohttp.ClientResponse) -> str:
    raw = await r.content.read(_MAX_ERROR_BODY)
    try:
        return raw.decode(r.charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return raw.decode("utf-8", errors="replace")


def _where(location: str | None) -> str:
    """The redirect's target for a log line and /readyz: bounded, without credentials or a query
    (a login page's query string may carry session state that is nobody's business in a log)."""
    if not location:
        return "no Location given"
    try:
        parts = urlsplit(one_line(location, 300))
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "an unparsable Location"
    if host and ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    where = f"{parts.scheme}://{host}{port}{parts.path}" if host else parts.path
    return repr(where + ("?…" if parts.query else ""))


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from this service; fall back to our own backoff
