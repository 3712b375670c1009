"""The console (`GET /`) on a real aiohttp server on 127.0.0.1 over a memory spool: what it shows,
what it escapes, the headers that keep it self-contained, and who may replay and purge."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html.parser import HTMLParser
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from relay import event
from relay.config import Config, HttpIngestConfig, IngestConfig
from relay.ops.console_app import SECURITY_HEADERS
from relay.server import HTTP_SOURCE, SAMPLER, build_app
from relay.spool import DeadLetter, Incoming, MemorySpool, Reject
from tests.helpers import make_event

TOKEN = "s3cret-console-token"
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>{{disabled}}'


class Tags(HTMLParser):
    """The elements of a page, and whatever in them a strict CSP would block."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.names.add(tag)
        names = {name for name, _ in attrs}
        if tag == "style" or "style" in names or any(n.startswith("on") for n in names):
            self.inline.append(self.get_starttag_text() or tag)
        self._in_script = tag == "script"
        if tag == "script" and "src" not in names:
            self.inline.append("inline <script>")

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("script text")


class Console:
    """A relay application with the console, served on 127.0.0.1, and a client session."""

    def __init__(self, spool: MemorySpool, app: web.Application, url: str) -> None:
        self.spool, self.app, self.url = spool, app, url
        self.session = aiohttp.ClientSession()

    async def get(self, path: str = "/") -> tuple[int, str, Any]:
        async with self.session.get(self.url + path) as r:
            return r.status, await r.text(), r.headers

    async def act(
        self,
        path: str,
        payload: object,
        token: str | None = None,
        **headers: str,
    ) -> tuple[int, dict]:
        sent = {"Content-Type": "application/json", "X-Relay-Console": "1", **headers}
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        async with self.session.post(self.url + path, data=data, headers=sent) as r:
            return r.status, orjson.loads(await r.read())

    async def dead_letter(self, **overrides: object) -> bytes:
        """An event the upstream refused for good: a valid, replayable dead letter."""
        body = event.encode(event.normalise(make_event(**overrides)))
        await self.spool.append([Incoming(body, "http")])
        (leased,) = await self.spool.lease(1)
        await self.spool.dead_letter([DeadLetter(leased.id, "rejected", HOSTILE)])
        return body


@asynccontextmanager
async def console(token: str | None = None, listen: str = "127.0.0.1:0") -> AsyncIterator[Console]:
    cfg = Config()
    cfg = dataclasses.replace(
        cfg,
        ingest=dataclasses.replace(
            cfg.ingest, http=dataclasses.replace(cfg.ingest.http, listen=listen)
        ),
    )
    assert isinstance(cfg.ingest, IngestConfig) and isinstance(cfg.ingest.http, HttpIngestConfig)
    spool = MemorySpool()
    app = build_app(cfg, spool, auth_token=token)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    c = Console(spool, app, f"http://127.0.0.1:{runner.addresses[0][1]}")
    try:
        yield c
    finally:
        await c.session.close()
        await runner.cleanup()


async def test_the_page_shows_depth_and_dead_letters_escaped_with_strict_headers() -> None:
    async with console() as c:
        await c.spool.append([Incoming(event.encode(make_event()), "http")] * 1)
        await c.spool.append([Incoming(event.encode(make_event()), "http")])
        await c.dead_letter()
        await c.spool.append([], [Reject(raw=HOSTILE, error=f"bad: {HOSTILE}", source=HOSTILE)])
        c.app[SAMPLER].sample()
        status, html, headers = await c.get("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    for name, value in SECURITY_HEADERS.items():
        assert headers[name] == value
    assert re.search(r'id="depth">2<', html), "two events wait (the third is a dead letter)"
    assert re.search(r'id="dead-count">2<', html)
    assert "Dead letters (2)" in html and 'data-id="1"' in html and 'data-id="2"' in html
    # hostile input is text, never markup
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert "{{disabled}}" in html, "text in a dead letter is no placeholder"
    # nothing the CSP would block: no inline script or style, no event handler attributes
    tags = Tags()
    tags.feed(html)
    assert tags.inline == [] and tags.names >= {"svg", "article", "script", "link"}
    assert "<svg" in html and "Queue depth" in html


async def test_assets_are_served_with_their_types_and_the_page_needs_nothing_else() -> None:
    async with console() as c:
        _, html, _ = await c.get("/")
        wanted = re.findall(r'(?:src|href)="(/[^"]*)"', html)
        assert {"/console/console.css", "/console/console.js", "/console/favicon.svg"} <= set(
            wanted
        )
        assert not re.search(r'(?:src|href)="(?:https?:)?//', html), "nothing from elsewhere"
        types = {}
        for path in wanted:
            status, _, headers = await c.get(path)
            assert status == 200, path
            types[path] = headers["Content-Type"].split(";")[0]
            if path.startswith("/console/"):
                assert (
                    headers["Content-Security-Policy"]
                    == SECURITY_HEADERS["Content-Security-Policy"]
                )
    assert types["/console/console.css"] == "text/css"
    assert types["/console/console.js"] == "text/javascript"


async def test_the_fragment_follows_the_spool() -> None:
    async with console() as c:
        _, before, _ = await c.get("/console/fragment")
        await c.spool.append([Incoming(event.encode(make_event()), "http") for _ in range(3)])
        await c.dead_letter()
        _, after, headers = await c.get("/console/fragment")
    assert 'id="depth">0<' in before and "No dead letters." in before
    assert 'id="depth">3<' in after and "Dead letters (1)" in after
    assert "<html" not in after and headers["Cache-Control"] == "no-store"


async def test_with_a_token_actions_need_it_and_a_replay_queues_the_event_again(
    caplog,
) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    async with console(token=TOKEN) as c:
        body = await c.dead_letter()
        path = "/console/dead-letters/replay"
        assert (await c.act(path, {"ids": [1]}))[0] == 403
        status, answer = await c.act(path, {"ids": [1]}, token="wrong")
        assert status == 403 and "token" in answer["error"]
        assert c.spool.stats().dead_letters == 1
        status, answer = await c.act(path, {"ids": [1]}, token=TOKEN)
        assert (status, answer["replayed"], answer["skipped"]) == (200, 1, {})
        assert c.spool.stats().dead_letters == 0
        (leased,) = await c.spool.lease(1)
        _, html, _ = await c.get("/")
    assert leased.body == body
    assert "No dead letters." in html and 'data-mode="token"' in html
    assert "console: replayed 1 dead letter(s)" in caplog.text and "127.0.0.1" in caplog.text
    assert TOKEN not in caplog.text and TOKEN not in html


async def test_a_reloaded_token_counts_at_once() -> None:
    async with console(token=TOKEN) as c:
        await c.dead_letter()
        c.app[HTTP_SOURCE].set_auth_token("the-new-one")
        path = "/console/dead-letters/purge"
        assert (await c.act(path, {"older_than": "0s"}, token=TOKEN))[0] == 403
        status, answer = await c.act(path, {"older_than": "0s"}, token="the-new-one")
    assert (status, answer) == (200, {"purged": 1})


async def test_without_a_token_only_loopback_may_act() -> None:
    async with console() as c:
        await c.dead_letter()
        await c.dead_letter()
        path = "/console/dead-letters/replay"
        # a page of another site reaching 127.0.0.1 by DNS rebinding still names its own host
        status, answer = await c.act(path, {"all": True}, Host="evil.example")
        assert status == 403 and "this machine only" in answer["error"]
        status, answer = await c.act(path, {"all": True})
        assert (status, answer["replayed"]) == (200, 2)
    async with console(listen="0.0.0.0:0") as c:
        await c.dead_letter()
        status, answer = await c.act(path, {"all": True})
        _, html, _ = await c.get("/")
    assert status == 403 and "ingest.http.auth_token_file" in answer["error"]
    assert c.spool.stats().dead_letters == 1
    assert 'id="actions-off"' in html and re.search(r'id="replay-all" disabled', html)
    assert re.search(r'class="replay" data-id="1" disabled', html)


async def test_cross_site_requests_and_forms_are_refused() -> None:
    async with console() as c:
        await c.dead_letter()
        path = "/console/dead-letters/replay"
        # what a cross-site form can send: no custom header, a form content type
        async with c.session.post(
            c.url + path, data="all=true", headers={"Content-Type": "text/plain"}
        ) as r:
            assert r.status == 415
        status, _ = await c.act(path, {"all": True}, **{"Sec-Fetch-Site": "cross-site"})
        assert status == 403
        no_header = {"Content-Type": "application/json"}
        async with c.session.post(c.url + path, data=b'{"all":true}', headers=no_header) as r:
            assert r.status == 415
        assert c.spool.stats().dead_letters == 1


async def test_bad_action_bodies_get_one_line_and_cost_little() -> None:
    async with console() as c:
        await c.dead_letter()
        replay, purge = "/console/dead-letters/replay", "/console/dead-letters/purge"
        for payload in (
            b"not json",
            [1],
            {"ids": "1"},
            {"ids": []},
            b'{"ids": [2361183241434822606848]}',
        ):
            status, answer = await c.act(replay, payload)
            assert status == 400 and "\n" not in answer["error"], payload
        status, answer = await c.act(replay, {"ids": list(range(1, 2000))})
        assert status == 400
        status, _ = await c.act(replay, b'{"ids": [' + b"1," * 40_000 + b"1]}")
        assert status == 413
        status, answer = await c.act(purge, {"older_than": "soon"})
        assert status == 400 and "older_than" in answer["error"]
        status, answer = await c.act(replay, {"ids": [99]})
        assert (status, answer["skipped"]) == (200, {"99": "no such dead letter"})
        assert c.spool.stats().dead_letters == 1


async def test_many_and_long_dead_letters_are_bounded_on_the_page() -> None:
    async with console() as c:
        rejects = [Reject(raw="x" * 5000, error="e" * 5000, source="http") for _ in range(150)]
        await c.spool.append([], rejects)
        _, html, _ = await c.get("/")
    assert html.count('<article class="letter"') == 100
    assert "50 more not shown" in html and "Dead letters (150)" in html
    assert "e" * 301 not in html and "x" * 601 not in html
    assert len(html) < 200_000


async def test_an_invalid_dead_letter_is_left_in_place_with_the_reason() -> None:
    async with console() as c:
        await c.spool.append([], [Reject(raw="{}", error="status is required", source="http")])
        status, answer = await c.act("/console/dead-letters/replay", {"all": True})
    assert status == 200 and answer["replayed"] == 0 and "1" in answer["skipped"]


async def test_beyond_loopback_the_events_need_the_token_and_the_rest_does_not() -> None:
    async with console(token=TOKEN, listen="0.0.0.0:0") as c:
        body = await c.dead_letter()
        message_id = orjson.loads(body)["message_id"]
        _, page, _ = await c.get("/")
        async with c.session.get(
            c.url + "/console/fragment", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as r:
            with_token = await r.text()
        async with c.session.get(
            c.url + "/console/fragment", headers={"Authorization": "Bearer wrong"}
        ) as r:
            wrong = await r.text()
    assert message_id not in page and 'id="events-hidden"' in page
    assert "Dead letters (1)" in page and "rejected" in page  # reason, error, time: always
    assert message_id in with_token and 'id="events-hidden"' not in with_token
    assert message_id not in wrong
    assert 'data-mode="token"' in page and 'id="replay-all" disabled' not in page


async def test_a_replay_from_the_page_wakes_delivery_waiting_on_a_sqlite_spool(tmp_path) -> None:
    """The page replays through the admin side, as `relay dlq` does from outside; the running
    spool notices within its idle tick and hands the event to a lease that is waiting."""
    from relay.spool import SqliteAdmin, SqliteSpool

    spool = await SqliteSpool.open(tmp_path / "spool", max_bytes=1 << 30, dedup_window=3600)
    app = build_app(Config(), spool, admin=SqliteAdmin(tmp_path / "spool", max_bytes=1 << 30))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    c = Console(spool, app, f"http://127.0.0.1:{runner.addresses[0][1]}")
    try:
        body = await c.dead_letter()
        waiting = asyncio.create_task(spool.lease(1, wait=10))
        await asyncio.sleep(0)  # the lease is waiting before the replay
        started = time.monotonic()
        status, answer = await c.act("/console/dead-letters/replay", {"ids": [1]})
        assert (status, answer["replayed"]) == (200, 1)
        (leased,) = await waiting
        assert leased.body == body and time.monotonic() - started < 5
    finally:
        await c.session.close()
        await runner.cleanup()
        await spool.close()


async def test_on_loopback_the_events_need_the_token_or_a_local_host_too() -> None:
    """Behind a reverse proxy every request is local, and a page of another site can be rebound
    to 127.0.0.1: the events are read under the same rules as the actions."""
    async with console(token=TOKEN) as c:
        message_id = orjson.loads(await c.dead_letter())["message_id"]
        _, page, _ = await c.get("/console/fragment")
        async with c.session.get(
            c.url + "/console/fragment", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as r:
            with_token = await r.text()
    assert message_id not in page and "once the token" in page
    assert message_id in with_token
    async with console() as c:
        message_id = orjson.loads(await c.dead_letter())["message_id"]
        async with c.session.get(
            c.url + "/console/fragment", headers={"Host": "evil.example"}
        ) as r:
            rebound = await r.text()
        _, local, _ = await c.get("/console/fragment")
    assert message_id not in rebound and 'id="events-hidden"' in rebound
    assert message_id in local


async def test_an_action_body_in_several_segments_is_read_whole() -> None:
    async with console(token=TOKEN) as c:
        await c.dead_letter()
        host, port = c.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        body = b'{"all": true}'
        writer.write(
            b"POST /console/dead-letters/replay HTTP/1.1\r\n"
            + f"Host: {host}:{port}\r\nAuthorization: Bearer {TOKEN}\r\n".encode()
            + b"Content-Type: application/json\r\nX-Relay-Console: 1\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body[:5]
        )
        await writer.drain()
        # the rest a moment later, as a slow link sends it: not a wait for an outcome (a
        # shorter pause only makes the test easier to pass, never flaky)
        await asyncio.sleep(0.2)
        writer.write(body[5:])
        answer = await reader.read()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b'"replayed":1' in answer
