"""`GET /`: the console, for the operator without Prometheus and for anyone who opens the relay's
HTTP address in a browser: the queue, the upstream, the last hour as charts, and the dead
letters with replay and purge.

The page is plain HTML and CSS from `relay/ops/console/` (package data) with the live part built
by `console_view`; console.js refreshes that part and sends the actions. Nothing is fetched from
elsewhere, and a strict Content-Security-Policy says so to the browser: no inline script or
style, no other origin.

The actions change the spool, so they are allowed only when (a) `ingest.http.auth_token_file`
is set and the request carries that bearer token (the current one: a reload's new token counts
at once, through the HTTP source that checks producers), or (b) no token is configured, the
listener is bound to loopback, the peer is loopback and the Host header names loopback (so a web
page on another site cannot reach it by DNS rebinding). Each action must come as JSON with the
`X-Relay-Console` header, which a cross-site form cannot send.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import time
from importlib import resources

import orjson
from aiohttp import hdrs, web

from relay.config import Config, parse_duration, parse_listen, spool_options
from relay.config.advice import is_loopback_host
from relay.delivery.setup import DeliveryParts
from relay.errors import UserError
from relay.ops.console_view import Access, Letters, live_html
from relay.ops.samples import Sampler
from relay.ops.status import StatusReport
from relay.sources.http import HttpSource
from relay.sources.replay import prepare_replay
from relay.spool import MemorySpool, Spool, SpoolAdmin, SpoolError, open_admin
from relay.spool.memory_admin import MemoryAdmin

__all__ = ["SECURITY_HEADERS", "Console", "spool_admin"]

log = logging.getLogger("relay.ops.console")

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
ASSETS = {
    "console.css": "text/css",
    "console.js": "text/javascript",
    "favicon.svg": "image/svg+xml",
}
SHOWN = 100  # dead letters listed on the page; the rest are counted
RELIST_EVERY = 30.0  # seconds: the list is read again at least this often, or when it changed
MAX_ACTION_BODY = 64 * 1024
MAX_IDS = 1000
ACTION_HEADER = "X-Relay-Console"
REFRESH_SECONDS = 5


@functools.cache  # package data: it changes with the installed relay, not while it runs
def _asset(name: str) -> str:
    return (resources.files("relay.ops") / "console" / name).read_text(encoding="utf-8")


def _is_loopback_ip(text: str | None) -> bool:
    try:
        return text is not None and ipaddress.ip_address(text.split("%")[0]).is_loopback
    except ValueError:
        return False


def _host_name(host: str) -> str:
    """The name in a Host header, without port or IPv6 brackets."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def spool_admin(cfg: Config, spool: Spool) -> SpoolAdmin | None:
    """The admin side of the running spool, as `relay dlq` uses it (None: there is none)."""
    if isinstance(spool, MemorySpool):
        return MemoryAdmin(spool)  # the memory spool has no outside: its admin works on it
    try:
        return open_admin(
            cfg.spool.backend,
            cfg.spool.path,
            max_bytes=cfg.spool.max_bytes,
            options=spool_options(cfg),
        )
    except SpoolError:
        return None


class _DeadLetterCache:
    """The first dead letters, read again when the spool's dead-letter numbers change, at least
    every RELIST_EVERY seconds, or after an action; concurrent pages share one read."""

    def __init__(self, spool: Spool, admin: SpoolAdmin | None) -> None:
        self._spool, self._admin = spool, admin
        self._key: tuple[int, int] | None = None
        self._read_at = 0.0
        self._letters = Letters((), 0)
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        self._key = None

    async def get(self) -> Letters:
        stats = self._spool.stats()
        if self._admin is None:
            why = "dead letters cannot be listed here: see `relay dlq list`"
            return Letters((), stats.dead_letters, why)
        async with self._lock:
            key = (stats.dead_letters, stats.dead_letter_bytes)
            if key != self._key or time.monotonic() - self._read_at > RELIST_EVERY:
                try:
                    records = await self._admin.list_dead_letters(SHOWN + 1)
                except SpoolError as exc:
                    return Letters((), stats.dead_letters, f"cannot list dead letters: {exc}")
                total = len(records) if len(records) <= SHOWN else max(len(records), key[0])
                self._letters = Letters(records[:SHOWN], total)
                self._key, self._read_at = key, time.monotonic()
            return self._letters


class Console:
    def __init__(
        self,
        cfg: Config,
        spool: Spool,
        status: StatusReport,
        sampler: Sampler,
        admin: SpoolAdmin | None,
        http_source: HttpSource,
        delivery: DeliveryParts | None = None,
    ) -> None:
        self.sampler = sampler
        self._status = status
        self._source = http_source
        self._admin = admin
        self._letters = _DeadLetterCache(spool, admin)
        host, _ = parse_listen(cfg.ingest.http.listen, "ingest.http.listen")
        self._loopback_listener = is_loopback_host(host)
        self._delivery = delivery

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.page)
        app.router.add_get("/console/fragment", self.fragment)
        for name in ASSETS:
            app.router.add_get(f"/console/{name}", self.asset)
        app.router.add_post("/console/dead-letters/replay", self.replay)
        app.router.add_post("/console/dead-letters/purge", self.purge)

    # -- who may act ---------------------------------------------------------------------------

    def access(self, request: web.Request | None = None) -> Access:
        """The actions' mode; with a request, also whether its peer qualifies for loopback."""
        if self._source.token_required:
            return Access("token")
        if not self._loopback_listener:
            return Access(
                "off",
                "Replay and purge are off: set ingest.http.auth_token_file (the page then asks "
                "for that token) or bind ingest.http.listen to loopback.",
            )
        if request is not None and not (
            _is_loopback_ip(request.remote)
            and is_loopback_host(_host_name(request.headers.get(hdrs.HOST, "")))
        ):
            return Access("off", "Replay and purge are allowed from this machine only.")
        return Access("loopback")

    def _refusal(self, request: web.Request) -> web.Response | None:
        """Why an action request is refused (403/415), or None to go ahead."""
        if request.headers.get(ACTION_HEADER) != "1" or request.content_type != "application/json":
            return _error(415, f"send JSON with the {ACTION_HEADER}: 1 header (as the page does)")
        if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            return _error(403, "refused: the request came from another site")
        access = self.access(request)
        if access.mode == "token" and not self._source.authorised(request):
            return _error(
                403, "missing or wrong token: type the token of ingest.http.auth_token_file"
            )
        if not access.allowed:
            return _error(403, access.why)
        return None

    def _cert_expiry(self) -> float | None:
        """When the Maskinporten business certificate expires (follows a reload's renewal)."""
        if self._delivery is None:
            return None
        not_after = self._delivery.tokens.creds.not_after
        return not_after.timestamp() if not_after is not None else None

    # -- pages ---------------------------------------------------------------------------------

    async def _live(self, request: web.Request) -> str:
        now = time.time()
        self.sampler.observe_upstream()
        return live_html(
            self._status.report(),
            self.sampler,
            await self._letters.get(),
            self.access(request),
            self._cert_expiry(),
            now,
            # events are the producers' data: only for the token's holder, or (no token set)
            # for this machine on a loopback listener, Host checked as for the actions (a page
            # of another site rebound to 127.0.0.1 must not read them either)
            show_events=(
                self.access(request).mode == "loopback" or self._source.authorised(request)
            ),
        )

    async def page(self, request: web.Request) -> web.Response:
        access = self.access(request)
        live = await self._live(request)
        # the live part last: a dead letter's text must not be taken for a placeholder
        html = (
            _asset("page.html")
            .replace("{{refresh}}", str(REFRESH_SECONDS))
            .replace("{{mode}}", access.mode)
            .replace("{{disabled}}", "" if access.allowed else " disabled")
            .replace("{{token-hidden}}", "" if access.mode == "token" else " hidden")
            .replace("{{live}}", live)
        )
        return web.Response(text=html, content_type="text/html", headers=SECURITY_HEADERS)

    async def fragment(self, request: web.Request) -> web.Response:
        html = await self._live(request)
        return web.Response(text=html, content_type="text/html", headers=SECURITY_HEADERS)

    async def asset(self, request: web.Request) -> web.Response:
        name = request.path.rsplit("/", 1)[1]
        return web.Response(text=_asset(name), content_type=ASSETS[name], headers=SECURITY_HEADERS)

    # -- actions -------------------------------------------------------------------------------

    async def _body(self, request: web.Request) -> dict:
        if request.content_length is not None and request.content_length > MAX_ACTION_BODY:
            raise _Bad(413, "request too large")
        data = b""
        try:
            # read() returns what has arrived so far: a body in several segments needs a loop
            while len(data) <= MAX_ACTION_BODY:
                chunk = await request.content.read(MAX_ACTION_BODY + 1 - len(data))
                if not chunk:
                    break
                data += chunk
        except (ConnectionError, asyncio.IncompleteReadError):
            raise _Bad(400, "request body incomplete") from None
        if len(data) > MAX_ACTION_BODY:
            raise _Bad(413, "request too large")
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise _Bad(400, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise _Bad(400, "the body must be a JSON object")
        return body

    async def replay(self, request: web.Request) -> web.Response:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        try:
            body = await self._body(request)
            ids = _ids(body)
        except _Bad as bad:
            return _error(bad.status, bad.text)
        if self._admin is None:
            return _error(503, "this spool has no admin side: use `relay dlq replay`")
        try:
            replayed, skipped = await self._admin.replay_dead_letters(ids, prepare_replay)
        except SpoolError as exc:
            return _error(503, f"replay failed: {exc}")
        finally:
            self._letters.invalidate()
        log.info(
            "console: replayed %d dead letter(s) into the spool (%d left in place) for %s",
            len(replayed),
            len(skipped),
            request.remote,
        )
        left = {str(k): v for k, v in list(skipped.items())[:SHOWN]}
        return _json({"replayed": len(replayed), "ids": replayed[:MAX_IDS], "skipped": left})

    async def purge(self, request: web.Request) -> web.Response:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        try:
            body = await self._body(request)
            value = body.get("older_than")
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise _Bad(400, 'older_than is required, e.g. "30d"')
            try:
                age = parse_duration(value, "older_than")
            except UserError as exc:
                raise _Bad(400, str(exc)) from None
        except _Bad as bad:
            return _error(bad.status, bad.text)
        if self._admin is None:
            return _error(503, "this spool has no admin side: use `relay dlq purge`")
        try:
            purged = await self._admin.purge_dead_letters(age)
        except SpoolError as exc:
            return _error(503, f"purge failed: {exc}")
        finally:
            self._letters.invalidate()
        log.info(
            "console: purged %d dead letter(s) older than %.0f s for %s",
            purged,
            age,
            request.remote,
        )
        return _json({"purged": purged})


class _Bad(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


def _ids(body: dict) -> list[int] | None:
    """The dead letters a replay names: a list of ids, or None for `"all": true`."""
    if body.get("all") is True:
        return None
    ids = body.get("ids")
    if (
        not isinstance(ids, list)
        or not ids
        or len(ids) > MAX_IDS
        or not all(type(i) is int and 0 < i < 2**63 for i in ids)
    ):
        raise _Bad(400, f'send {{"ids": [n, ...]}} (1 to {MAX_IDS} ids) or {{"all": true}}')
    return ids


def _json(payload: dict, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload),
        status=status,
        content_type="application/json",
        headers=SECURITY_HEADERS,
    )


def _error(status: int, text: str) -> web.Response:
    return _json({"error": text}, status)
