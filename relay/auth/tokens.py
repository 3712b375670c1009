"""Maskinporten access tokens: one request (:func:`request_token`) and a refreshing cache.

:class:`TokenProvider` keeps one token in memory and renews it in the background before it
expires, so that in steady state :meth:`TokenProvider.token` never waits for the network.
Only the background task talks to the token endpoint, which is what makes concurrent callers
on a cold provider share one request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import orjson
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from relay import supervision
from relay.auth.credentials import Credentials
from relay.auth.grant import GRANT_TYPE, make_assertion
from relay.backoff import backoff_delay
from relay.config.model import MaskinportenConfig
from relay.delivery.proxy import maskinporten_session
from relay.errors import one_line

__all__ = [
    "OAuthError",
    "TokenEndpointError",
    "TokenHttpError",
    "TokenNetworkError",
    "TokenProvider",
    "TokenResponse",
    "refresh_margin",
    "request_token",
]

log = logging.getLogger("relay.auth")

DEFAULT_REQUEST_TIMEOUT = 10.0
# The most of an error answer that goes into a log line; Maskinporten's descriptions are short.
_MAX_DESCRIPTION = 300


class TokenEndpointError(Exception):
    """A failed token request; ``str()`` is one line without secrets, fit for a log."""

    kind = "http_error"  # the TokenProvider.fetches key this failure counts under


class OAuthError(TokenEndpointError):
    """The token endpoint's JSON error answer, e.g. ``invalid_client``."""

    kind = "oauth_error"

    def __init__(self, error: str, description: str, status: int) -> None:
        self.error = error
        self.description = description
        self.status = status
        super().__init__(f"{error}: {description}" if description else error)


class TokenHttpError(TokenEndpointError):
    """An HTTP answer that is neither a token nor an OAuth error (a 503 page, bad JSON)."""

    kind = "http_error"

    def __init__(self, message: str, status: int) -> None:
        self.status = status
        super().__init__(message)


class TokenNetworkError(TokenEndpointError):
    """The token endpoint could not be reached, or did not answer in time."""

    kind = "network_error"


class _FetchFailed(Exception):
    """A fetch failed and was logged; the refresher tries again after a backoff."""


@dataclass(frozen=True)
class TokenResponse:
    access_token: str = field(repr=False)
    expires_in: float
    scope: str
    token_type: str


def refresh_margin(lifetime: float) -> float:
    """How long before expiry to renew: 30 s for 120 s tokens, half of a very short one."""
    return max(0.25 * lifetime, min(30.0, 0.5 * lifetime))


async def request_token(
    session: aiohttp.ClientSession,
    cfg: MaskinportenConfig,
    creds: Credentials,
    *,
    timeout: float = DEFAULT_REQUEST_TIMEOUT,
    now: float | None = None,
) -> TokenResponse:
    """One grant, one POST; raises a :class:`TokenEndpointError` subclass on any failure."""
    assertion = make_assertion(
        creds, client_id=cfg.client_id, audience=cfg.audience, scope=cfg.scope, now=now
    )
    try:
        async with session.post(
            cfg.token_url,
            data={"grant_type": GRANT_TYPE, "assertion": assertion},
            headers={"Accept": "application/json"},
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
        ) as resp:
            status = resp.status
            body = await resp.read()
    except TimeoutError:
        raise TokenNetworkError(
            f"cannot reach token endpoint {cfg.token_url}: no answer within {timeout:g} s"
        ) from None
    except (aiohttp.ClientError, OSError) as e:
        reason = one_line(str(e), _MAX_DESCRIPTION) or type(e).__name__
        raise TokenNetworkError(f"cannot reach token endpoint {cfg.token_url}: {reason}") from None

    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        # an endpoint that echoed the grant back must not get it into a log line
        description = str(answer.get("error_description") or "").replace(assertion, "<grant>")
        raise OAuthError(
            one_line(answer["error"], _MAX_DESCRIPTION),
            one_line(description, _MAX_DESCRIPTION),
            status,
        )
    if status != 200:
        raise TokenHttpError(f"token endpoint {cfg.token_url} answered HTTP {status}", status)
    if not isinstance(answer, dict) or not isinstance(answer.get("access_token"), str):
        raise TokenHttpError(
            f"token endpoint {cfg.token_url} answered HTTP 200 without an access_token", status
        )
    expires_in = answer.get("expires_in")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in <= 0:
        raise TokenHttpError(
            f"token endpoint {cfg.token_url} answered HTTP 200 without a positive expires_in",
            status,
        )
    return TokenResponse(
        access_token=answer["access_token"],
        expires_in=float(expires_in),
        scope=str(answer.get("scope") or cfg.scope),
        token_type=str(answer.get("token_type") or "Bearer"),
    )


class TokenProvider:
    """A Maskinporten access token kept fresh in the background; see the module docstring."""

    def __init__(
        self,
        cfg: MaskinportenConfig,
        creds: Credentials,
        *,
        session: aiohttp.ClientSession | None = None,
        initial_backoff: float = 0.2,
        max_backoff: float = 30.0,
        clock: Callable[[], float] = time.time,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        self._cfg = cfg
        self.creds = creds  # read by /metrics for the certificate expiry
        self._session = session
        self._own_session = session is None
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._clock = clock
        self._request_timeout = request_timeout
        kinds = ("ok", "oauth_error", "http_error", "network_error")
        self.fetches: dict[str, int] = dict.fromkeys(kinds, 0)
        self.last_error: str | None = None
        self._token: str | None = None
        self._lifetime = 0.0
        self._expires_at = 0.0
        self._refresh_at = 0.0
        # set (and replaced) whenever a new token arrives or the provider closes
        self._new_token = asyncio.Event()
        # interrupts the refresher's wait for the next scheduled refresh
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._logged_error: str | None = None
        self._got_first = False
        # consecutive refusals of fresh tokens by the upstream; spaces out the refetches
        self._invalidations = 0
        self._not_before = 0.0

    async def start(self) -> None:
        """Start the background refresher; returns without waiting for a token."""
        if self._closed:
            raise RuntimeError("TokenProvider is closed")
        if self._task is not None:
            return
        if self._session is None:
            self._session = maskinporten_session(self._cfg)  # through the proxy chosen for it
        self._start_refresher()

    def _start_refresher(self) -> None:
        task = asyncio.create_task(self._run(), name="relay.auth token refresher")
        self._task = supervision.watch(task, "token refresher")

    async def token(self) -> str:
        """A valid access token; waits (without limit) only while there is none."""
        while True:
            if self._closed:
                raise RuntimeError("TokenProvider is closed")
            token = self._usable_token()
            if token is not None:
                return token
            if self._task is None:
                await self.start()
            await self._new_token.wait()

    def invalidate(self, token: str) -> None:
        """The upstream refused `token`: if it is the current one, drop it and fetch anew."""
        if self._closed or token != self._token:
            return  # an older token, already replaced
        self._token = None
        self._invalidations += 1
        if self._invalidations == 1:
            log.info("the upstream refused the access token; fetching a new one")
            self._not_before = 0.0
        else:
            if self._invalidations == 2:
                log.warning(
                    "the upstream refused a freshly fetched access token too; check that "
                    "maskinporten.scope %r is what the upstream expects",
                    self._cfg.scope,
                )
            # without this, an upstream refusing every token would have us hammer Maskinporten
            self._not_before = self._clock() + backoff_delay(
                self._invalidations - 2, self._initial_backoff, self._max_backoff
            )
        self._wake.set()

    def confirmed(self, token: str) -> None:
        """The upstream accepted `token`: a later refusal is again answered by an immediate
        fetch, not by the backoff meant for an upstream that refuses every token."""
        if token == self._token:
            self._invalidations = 0
            self._not_before = 0.0

    def replace_credentials(self, cfg: MaskinportenConfig, creds: Credentials, fetch: bool) -> None:
        """Sign the next grants with `creds` (a reload); the token in hand stays in use until
        its replacement arrives. `fetch` (the signer changed): fetch it now, by a new refresher,
        so that neither a grant on its way signed the old way nor a backoff pause is waited for."""
        self._cfg, self.creds = cfg, creds
        if fetch and self._task is not None and not self._closed:
            self._task.cancel()
            self._refresh_at, self._logged_error = 0.0, None
            self._start_refresher()

    def expires_in(self) -> float | None:
        """Seconds left on the current token; None when there is none."""
        if self._token is None:
            return None
        return max(0.0, self._expires_at - self._clock())

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            # one that died was reported by supervision: the shutdown goes on in order
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None
        self._token = None
        self._announce()

    def current(self) -> str | None:
        """The valid token at hand, without waiting; None when a fetch must be awaited."""
        if self._closed:
            return None
        return self._usable_token()

    def _usable_token(self) -> str | None:
        if self._token is None:
            return None
        # a token about to expire could lapse on its way to the upstream
        leeway = min(1.0, 0.1 * self._lifetime)
        if self._expires_at - self._clock() <= leeway:
            return None
        return self._token

    def _announce(self) -> None:
        """Wake every token() caller waiting for a new token."""
        event, self._new_token = self._new_token, asyncio.Event()
        event.set()

    def _delay(self) -> float:
        """Seconds until the next fetch is due; zero or less means now."""
        now = self._clock()
        if self._token is None:
            return self._not_before - now
        return self._refresh_at - now

    async def _run(self) -> None:
        # full jitter between failed fetches: many relays restarted together do not hit the
        # endpoint in step; the backoff starts over with each token got
        retrying = AsyncRetrying(
            wait=wait_random_exponential(multiplier=self._initial_backoff, max=self._max_backoff),
            retry=retry_if_exception_type(_FetchFailed),
        )
        while True:
            await retrying(self._fetch_when_due)

    async def _fetch_when_due(self) -> None:
        """Wait until a fetch is due (the current token's refresh time, or without a token the
        spacing after a refusal; `invalidate` cuts the wait short), then fetch once."""
        while True:
            self._wake.clear()
            delay = self._delay()
            if delay <= 0:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
        await self._attempt()

    async def _attempt(self) -> None:
        """One request to the token endpoint; raises _FetchFailed (logged already) on failure."""
        assert self._session is not None
        scheduled = self._token is not None
        sent_at = self._clock()
        try:
            resp = await request_token(
                self._session,
                self._cfg,
                self.creds,
                timeout=self._request_timeout,
                now=sent_at,
            )
        except OAuthError as e:
            self.fetches[e.kind] += 1
            self._failed(str(e), f"Maskinporten refused the grant for {self._cfg.client_id}: {e}")
            raise _FetchFailed from None
        except TokenEndpointError as e:
            self.fetches[e.kind] += 1
            self._failed(str(e), str(e), level=logging.WARNING)
            raise _FetchFailed from None
        except Exception as e:
            # a bug, not the endpoint; keep the refresher alive and say so once
            message = f"unexpected {type(e).__name__} while fetching an access token"
            self._failed(message, message, exc_info=True)
            raise _FetchFailed from None

        # expires_in is counted from when the request left, so the token never outlives it
        self._token = resp.access_token
        self._lifetime = resp.expires_in
        self._expires_at = sent_at + resp.expires_in
        self._refresh_at = self._expires_at - refresh_margin(resp.expires_in)
        self.fetches["ok"] += 1
        self.last_error = None
        if scheduled:
            self._invalidations = 0
        if self._logged_error is not None:
            log.info("token endpoint recovered; got a new access token for %s", self._cfg.client_id)
            self._logged_error = None
        if not self._got_first:
            self._got_first = True
            log.info(
                "got access token for %s, scope %s, expires in %d s",
                self._cfg.client_id,
                resp.scope,
                resp.expires_in,
            )
        else:
            log.debug("refreshed access token, expires in %d s", resp.expires_in)
        self._announce()

    def _failed(
        self, error: str, message: str, *, level: int = logging.ERROR, exc_info: bool = False
    ) -> None:
        self.last_error = error
        if error == self._logged_error:
            return  # said already; the retries continue quietly
        self._logged_error = error
        remaining = self.expires_in()
        still = (
            f"; the current token is valid for {remaining:.0f} s more"
            if self._usable_token() is not None and remaining is not None
            else ""
        )
        log.log(level, "%s (retrying%s)", message, still, exc_info=exc_info)
