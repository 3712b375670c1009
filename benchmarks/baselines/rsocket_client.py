"""Baseline for RSocket delivery: a bare rsocket-py client sending request-responses to route
`log-fire` with the relay's single-write transport and the same composite metadata (routing +
bearer token), `--max-in-flight` requests outstanding, no spool, no retries, no timeouts.

    python -m benchmarks.baselines.rsocket_client --port P --token-file F --count N \
        [--run TAG] [--max-in-flight 128]

Sends N events made like the relay's stored events. Prints SENDING once connected, then one JSON
object with the client's own timing (the scenarios time it at the upstream, as they do the relay).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import timedelta
from pathlib import Path

import orjson
from rsocket.extensions.helpers import authenticate_bearer, composite, route
from rsocket.extensions.mimetypes import WellKnownMimeTypes
from rsocket.payload import Payload
from rsocket.rsocket_client import RSocketClient

from benchmarks.events import stored_bodies
from relay.delivery.rsocket.transport import SingleWriteTCP


async def send_all(host: str, port: int, token: str, bodies: list[bytes], in_flight: int) -> dict:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)

    async def one_transport():
        yield SingleWriteTCP(reader, writer)

    client = RSocketClient(
        one_transport(),
        metadata_encoding=WellKnownMimeTypes.MESSAGE_RSOCKET_COMPOSITE_METADATA,
        data_encoding=WellKnownMimeTypes.APPLICATION_JSON,
        keep_alive_period=timedelta(seconds=20),
        max_lifetime_period=timedelta(seconds=90),
    )
    await client.connect()
    metadata = composite(route("log-fire"), authenticate_bearer(token))
    todo = iter(bodies)
    errors = 0

    async def worker() -> None:
        nonlocal errors
        for body in todo:
            try:
                await client.request_response(Payload(body, metadata))
            except Exception:  # counted: a baseline that fails is no baseline
                errors += 1

    print("SENDING", flush=True)
    first_sent = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    done = time.perf_counter()
    await client.close()
    return {
        "events": len(bodies),
        "errors": errors,
        "seconds": round(done - first_sent, 4),
        "events_per_s": round(len(bodies) / (done - first_sent), 1),
        "connect_seconds": round(first_sent - started, 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--token-file", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--run", default="b0b0b0b0", help="8 hex digits in every message_id")
    p.add_argument("--max-in-flight", type=int, default=128)
    a = p.parse_args()
    token = Path(a.token_file).read_text().strip()
    bodies = stored_bodies(a.run, a.count, stream=2)
    result = asyncio.run(send_all(a.host, a.port, token, bodies, a.max_in_flight))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
