"""Baseline for HTTP ingest: a bare aiohttp handler that parses the JSON body with orjson and
answers 200 as the relay does, storing nothing.

    python -m benchmarks.baselines.ingest_server --port P     (prints READY when listening)
"""

from __future__ import annotations

import argparse

import orjson
from aiohttp import web

ACCEPTED = orjson.dumps({"accepted": 1})


async def status(request: web.Request) -> web.Response:
    try:
        orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return web.Response(status=400, text="not JSON")
    return web.Response(body=ACCEPTED, content_type="application/json")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    app = web.Application()
    app.router.add_post("/api/status", status)
    web.run_app(
        app,
        host="127.0.0.1",
        port=a.port,
        access_log=None,
        print=lambda _: print("READY", flush=True),
    )


if __name__ == "__main__":
    main()
