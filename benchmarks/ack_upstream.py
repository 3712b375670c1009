"""A lean RSocket upstream: answers every `log-fire` request-response at once, stores nothing.

The status-service stand-in (`relay dev-upstream`) checks each request's token with a full JWT
verification and commits each request to SQLite, so it, not the sender, limits delivery speed.
This one only checks that the route is `log-fire`, that a bearer token is there and that the
data is JSON, and counts. Tokens still come from the Maskinporten stand-in.

    python -m benchmarks.ack_upstream --port P --expect N

Prints READY, then one JSON line each time N more events were acknowledged: events, requests,
events in the first request, and the Unix times of the first and the last acknowledgement.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import orjson
from rsocket.exceptions import RSocketApplicationError
from rsocket.helpers import create_future
from rsocket.payload import Payload
from rsocket.request_handler import BaseRequestHandler
from rsocket.rsocket_server import RSocketServer
from rsocket.transports.tcp import TransportTCP

from relay.dev.status_rsocket import parse_metadata


class Counter:
    def __init__(self, expect: int) -> None:
        self.expect = expect
        self.reset()

    def reset(self) -> None:
        self.events = self.requests = self.first_events = 0
        self.first_at = self.last_at = 0.0

    def add(self, n: int) -> None:
        now = time.time()
        if not self.requests:
            self.first_at, self.first_events = now, n
        self.events += n
        self.requests += 1
        self.last_at = now
        if self.events >= self.expect:
            fields = ("events", "requests", "first_events", "first_at", "last_at")
            line = orjson.dumps({k: getattr(self, k) for k in fields})
            sys.stdout.write(line.decode() + "\n")
            sys.stdout.flush()
            self.reset()


class Handler(BaseRequestHandler):
    def __init__(self, counter: Counter) -> None:
        super().__init__()
        self.counter = counter

    async def request_response(self, payload: Payload) -> asyncio.Future:
        tags, token = parse_metadata(payload.metadata)
        if not token or tags[:1] != ["log-fire"]:
            raise RSocketApplicationError("Access Denied: route log-fire and a token needed")
        value = orjson.loads(payload.data)
        self.counter.add(len(value) if isinstance(value, list) else 1)
        return create_future(Payload())


async def serve(port: int, expect: int) -> None:
    counter = Counter(expect)
    sockets = set()

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sockets.add(RSocketServer(TransportTCP(reader, writer), lambda: Handler(counter)))

    server = await asyncio.start_server(accept, "127.0.0.1", port)
    print("READY", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--expect", type=int, required=True, help="report after this many events")
    a = p.parse_args()
    asyncio.run(serve(a.port, a.expect))


if __name__ == "__main__":
    main()
