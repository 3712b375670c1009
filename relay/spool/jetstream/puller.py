"""Pulling messages from the shared durable consumer, and holding them while delivery works.

nats-py's `fetch` forgets what it asked for when it times out, and a message the server sends
after that sits in the client unseen until the next fetch (its ack timer running). Here every
pull request has its own reply subject under one wildcard subscription, so each request's end
(404 no messages, 408 expired, batch filled) is known; a message that arrives after its lease
call gave up is kept in `buffer` and handed out by the next call. Every message the relay holds,
buffered or leased, gets `in_progress` every ack_wait / 3, so no other relay is handed it while
this one still works on it; `release_all` at close gives them back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg

from relay.errors import one_line
from relay.spool.jetstream.options import JetStreamOptions

log = logging.getLogger("relay.spool.jetstream")

_NO_MESSAGES = {"404", "408"}
_PAUSE_AFTER_ERROR = 0.25  # seconds  # the request ended: nothing (more) to give, or it expired


class _Request:
    __slots__ = ("batch", "done", "expires_at", "received")

    def __init__(self, batch: int, expires_at: float) -> None:
        self.batch = batch
        self.received = 0
        self.done = False
        self.expires_at = expires_at


class Puller:
    """Pull requests on `opts.consumer`; owns every message this relay holds, by stream seq."""

    def __init__(self, nc: Client, opts: JetStreamOptions) -> None:
        self._nc = nc
        self._opts = opts
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{opts.stream}.{opts.consumer}"
        self._inbox = nc.new_inbox()
        self._ids = itertools.count(1)
        self._requests: dict[str, _Request] = {}
        self.buffer: deque[Msg] = deque()  # pulled, not yet handed out
        self.held: dict[int, Msg] = {}  # stream seq -> message, buffered or leased
        self._timers: dict[int, asyncio.TimerHandle] = {}  # released here, due later
        self.arrived = asyncio.Event()  # a message or a request's end came in
        self._sub = None
        self._keepalive: asyncio.Task[None] | None = None
        self.problem: str | None = None  # the last error status the consumer sent, if any
        self.refused_at = -1e9  # loop time of that status

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_message)
        self._keepalive = asyncio.create_task(self._keep_alive(), name="jetstream in_progress")

    async def stop(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    # -- asking ---------------------------------------------------------------------------------

    def pause(self) -> float:
        """Seconds to wait before asking again: a consumer that just answered with an error
        (no leader, say) is asked again after a moment, not in a loop."""
        if self.problem is None:
            return 0.0
        return max(0.0, self.refused_at + _PAUSE_AFTER_ERROR - asyncio.get_running_loop().time())

    def waiting(self) -> bool:
        """A pull request is open on the server (a message may come without asking again)."""
        now = asyncio.get_running_loop().time()
        return any(not r.done and r.expires_at > now for r in self._requests.values())

    async def request(self, batch: int, wait: float) -> _Request:
        """Ask for up to `batch` messages: at once (`wait` 0: the server answers what it has
        and ends the request), or waiting up to `wait` seconds for the first."""
        loop = asyncio.get_running_loop()
        rid = f"{self._inbox}.{next(self._ids)}"
        body: dict[str, object] = {"batch": batch}
        if wait > 0:
            body["expires"] = max(int(wait * 1e9), 1_000_000)
            req = _Request(batch, loop.time() + wait + 1.0)
        else:
            body["no_wait"] = True
            req = _Request(batch, loop.time() + self._opts.connect_timeout)
        self._forget_ended(loop.time())
        self._requests[rid.rsplit(".", 1)[1]] = req
        await self._nc.publish(self._next_subject, orjson.dumps(body), reply=rid)
        return req

    def _forget_ended(self, now: float) -> None:
        for key in [k for k, r in self._requests.items() if r.done or r.expires_at <= now]:
            del self._requests[key]

    async def settle(self, req: _Request, timeout: float) -> None:
        """Wait until `req` ended or `timeout` passed (a cancellation propagates)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not req.done and (remaining := deadline - loop.time()) > 0:
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self.arrived.wait()

    def later(self, seq: int, delay: float) -> None:
        """Hand a leased message out again after `delay` seconds, before newer ones; it stays
        held (and kept in progress) meanwhile."""
        loop = asyncio.get_running_loop()
        self._timers[seq] = loop.call_later(delay, self._due, seq)

    def _due(self, seq: int) -> None:
        self._timers.pop(seq, None)
        msg = self.held.get(seq)
        if msg is not None:
            self.buffer.appendleft(msg)
            self.arrived.set()

    def buffer_seqs(self) -> set[int]:
        return {m.metadata.sequence.stream for m in self.buffer}

    def take(self, limit: int) -> list[Msg]:
        out = []
        while self.buffer and len(out) < limit:
            out.append(self.buffer.popleft())
        return out

    # -- answers ---------------------------------------------------------------------------------

    async def _on_message(self, msg: Msg) -> None:
        headers = msg.headers or {}
        status = headers.get("Status")
        if status is not None and not msg.data and msg.reply in (None, ""):
            # a status comes on the request's own reply subject
            req = self._requests.get(msg.subject.rsplit(".", 1)[1])
            if status == "100":
                return  # an idle heartbeat
            if req is not None:
                req.done = True
            if status not in _NO_MESSAGES:
                # 409: consumer deleted, leadership change, too many waiting requests; 503: no
                # leader yet. Logged once per change; `pause` keeps lease from asking in a loop.
                problem = one_line(f"{status} {headers.get('Description', '')}".strip())
                if problem != self.problem:
                    log.warning("JetStream consumer %s said: %s", self._opts.consumer, problem)
                self.problem = problem
                self.refused_at = asyncio.get_running_loop().time()
            self.arrived.set()
            return
        self.problem = None
        # a message comes with its stream subject: it answers the oldest open request (one
        # relay has at most one open at a time, `waiting`)
        req = next((r for r in self._requests.values() if not r.done), None)
        seq = msg.metadata.sequence.stream
        if seq in self.held:
            # handed to us twice (its ack timer ran out while we held it): keep the newer
            # handle, whose ack the server accepts; the old one is still leased or buffered
            self.held[seq] = msg
        else:
            self.held[seq] = msg
            self.buffer.append(msg)
        if req is not None:
            req.received += 1
            if req.received >= req.batch:
                req.done = True
        self.arrived.set()

    # -- holding ---------------------------------------------------------------------------------

    def drop(self, seq: int) -> Msg | None:
        """Stop holding `seq` (settled); its message, or None when not held."""
        timer = self._timers.pop(seq, None)
        if timer is not None:
            timer.cancel()
        msg = self.held.pop(seq, None)
        if msg is not None and any(m is msg for m in self.buffer):
            # by identity: Msg is a dataclass, and comparing by value reads every field
            self.buffer = deque(m for m in self.buffer if m is not msg)
        return msg

    async def _keep_alive(self) -> None:
        every = max(self._opts.ack_wait / 3, 0.5)
        while True:
            await asyncio.sleep(every)
            for msg in list(self.held.values()):
                with contextlib.suppress(Exception):  # reconnecting: the next round tries again
                    await msg.in_progress()

    async def release_all(self) -> None:
        """Give every held message back (closing): another relay gets them without waiting
        for ack_wait."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for msg in list(self.held.values()):
            with contextlib.suppress(Exception):
                await msg.nak()
        self.held.clear()
        self.buffer.clear()


def delivered(msg: Msg) -> int:
    return msg.metadata.num_delivered


def seq_of(msg: Msg) -> int:
    return msg.metadata.sequence.stream
