"""An HTTP upstream that redirects every POST: the events stay queued, nothing counts as delivered.

aiohttp follows redirects by default and turns a POST answered 301/302/303 into a GET without the
body; a 200 on that GET used to delete the event unsent (and a 307/308 re-posted event and token
to wherever the Location pointed). Real parts: an aiohttp upstream on 127.0.0.1, the SQLite
spool, the delivery loop and the HTTP sink; only the token provider is a stand-in.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from relay.config import RetryConfig, UpstreamConfig
from relay.delivery.http_sink import HttpSink, _where
from relay.delivery.loop import Delivery
from relay.spool import Incoming, SqliteSpool
from tests.helpers import eventually, make_event

EVENTS = 6  # each gets three redirected POSTs, one at a time at the probing pace
MAX_BACKOFF = 0.5


class StaticTokens:
    """Stands in for the Maskinporten token provider: always the same valid token."""

    def __init__(self) -> None:
        self.invalidated = 0

    async def token(self) -> str:
        return "test-token"

    def current(self) -> str | None:
        return "test-token"

    def invalidate(self, token: str) -> None:
        self.invalidated += 1


class RedirectingUpstream:
    """`POST /api/status` answers `code` with a Location to `/maintenance`, which answers 200 to
    any method (as a maintenance page or a login proxy does) and counts what reaches it."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.redirecting = True
        self.posts: dict[str, list[float]] = defaultdict(list)  # message_id -> monotonic times
        self.accepted: list[str] = []
        self.followed: list[str] = []  # requests that reached the redirect's target
        self.location = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/api/status", self._status)
        app.router.add_route("*", "/maintenance", self._maintenance)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        # a query, which may carry a session and must not reach /readyz or a log line
        self.location = f"http://127.0.0.1:{port}/maintenance?ticket=abc123"
        return f"http://127.0.0.1:{port}/api/status"

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _status(self, request: web.Request) -> web.Response:
        message_id = orjson.loads(await request.read())["message_id"]
        self.posts[message_id].append(time.monotonic())
        if not self.redirecting:
            self.accepted.append(message_id)
            return web.Response(status=200)
        return web.Response(
            status=self.code, headers={"Location": self.location}, text="<html>moved</html>"
        )

    async def _maintenance(self, request: web.Request) -> web.Response:
        self.followed.append(request.method)
        return web.Response(status=200, text="<html>down for maintenance</html>")

    def post_count(self) -> int:
        return sum(len(times) for times in self.posts.values())


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
@pytest.mark.e2e
async def test_redirected_posts_keep_every_event(code: int, tmp_path: Path) -> None:
    upstream = RedirectingUpstream(code)
    url = await upstream.start()
    spool = await SqliteSpool.open(tmp_path / "spool", max_bytes=1 << 30, dedup_window=0)
    upstream_cfg = UpstreamConfig(transport="http", http_url=url, max_in_flight=32)
    retry = RetryConfig(initial_backoff=0.05, max_backoff=MAX_BACKOFF)
    tokens = StaticTokens()
    sink = HttpSink(upstream_cfg, retry, tokens)
    delivery = Delivery(spool, sink, upstream_cfg, retry)
    try:
        await spool.append([Incoming(orjson.dumps(make_event()), "test") for _ in range(EVENTS)])
        await sink.start()
        await delivery.start()

        # three attempts per event, unless events vanish or a redirect is followed first
        await eventually(
            lambda: (
                upstream.post_count() >= 3 * EVENTS
                or spool.stats().events < EVENTS
                or bool(upstream.followed)
            ),
            30,
            "three redirected POSTs per event",
        )
        assert not upstream.followed, f"the relay followed the redirect: {upstream.followed}"
        stats = spool.stats()
        assert stats.events == EVENTS, f"{EVENTS - stats.events} events deleted unsent"
        assert stats.dead_letters == 0
        assert tokens.invalidated == 0, "a redirect is no reason to doubt the token"

        # /readyz says where the upstream sent us, without the Location's secrets
        reason = sink.not_ready()
        assert reason is not None
        assert str(code) in reason
        assert f"{url.rsplit('/api/', 1)[0]}/maintenance" in reason
        assert "abc123" not in reason
        assert "upstream.http_url" in reason

        # retried slowly: at retry.max_backoff's pace, not the fast initial backoff
        gaps = [
            b - a
            for times in upstream.posts.values()
            for a, b in zip(times, times[1:], strict=False)
        ]
        assert gaps and min(gaps) >= 0.8 * MAX_BACKOFF, f"retried too fast: {min(gaps):.3f} s"

        # kept, not stuck: once the upstream accepts again, every event is delivered once
        upstream.redirecting = False
        await eventually(lambda: spool.stats().events == 0, 30, "the spool to drain")
        assert sorted(upstream.accepted) == sorted(upstream.posts)
        assert sink.not_ready() is None
    finally:
        await delivery.stop(5)
        await sink.close()
        await spool.close()
        await upstream.stop()


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        (
            "https://user:s3cret@proxy.example:8443/login?state=abc",
            "'https://proxy.example:8443/login?…'",
        ),
        ("/maintenance.html", "'/maintenance.html'"),
        ("http://[::1]:8080/x", "'http://[::1]:8080/x'"),
        (None, "no Location given"),
        ("http://[::1/x", "an unparsable Location"),
    ],
)
def test_redirect_target_is_shown_without_secrets(location: str | None, shown: str) -> None:
    assert _where(location) == shown


def test_redirect_target_is_bounded() -> None:
    assert len(_where("http://h/" + "a" * 100_000)) < 400
