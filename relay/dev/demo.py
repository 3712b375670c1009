"""`relay demo` (what `make run` runs): the stand-ins and a relay wired to them, in one process.

It prints a ready `curl` line and then every event as the status service receives it, so a new
user sees an event travel end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from pathlib import Path

import orjson

from relay.config import load_config
from relay.dev.example import SEED_EVENT
from relay.dev.upstream import DevUpstream
from relay.server import serve
from relay.signals import until_signalled

EXAMPLE = SEED_EVENT


def _say(text: str = "") -> None:
    print(text, flush=True)


async def run_demo(listen: str = "127.0.0.1:8080", folder: Path | None = None) -> None:
    work = folder or Path(tempfile.mkdtemp(prefix="relay-demo-"))
    upstream = DevUpstream(work / "upstream")
    addresses = await upstream.start(rsocket_port=0, http_port=0, maskinporten_port=0)
    config_path = work / "relay.toml"
    config_path.write_text(
        upstream.relay_config()
        + f'\n[spool]\npath = "{work / "spool"}"\n\n[ingest.http]\nlisten = "{listen}"\n'
    )
    cfg = load_config(config_path)
    stop = asyncio.Event()
    relay = asyncio.create_task(serve(cfg, stop))
    signals = asyncio.create_task(until_signalled(stop))
    watcher = asyncio.create_task(_show_deliveries(upstream))
    try:
        await asyncio.sleep(0.5)
        if relay.done():
            return await relay
        body = orjson.dumps(EXAMPLE).decode()
        _say()
        _say("relay demo: a relay and stand-ins for Maskinporten and the status service")
        _say(f"  work folder       {work} (throwaway certificates, spool, relay.toml)")
        _say(f"  relay             http://{listen}  (/healthz, /readyz)")
        _say(
            f"  status service    rsocket {addresses.host}:{addresses.rsocket_port}, "
            f"http {addresses.status_url}"
        )
        _say(f"  maskinporten      {addresses.maskinporten_url}/token")
        _say()
        _say("Send an event (change status or message_id to send another):")
        _say(
            f"  curl -s -H 'Content-Type: application/json' http://{listen}/api/status -d '{body}'"
        )
        _say("See what the status service received:")
        _say(
            f"  curl -s '{addresses.status_url}/api/statuses?conversation_id="
            f"{EXAMPLE['conversation_id']}'"
        )
        _say()
        _say("Waiting for events; Ctrl-C stops.")
        await relay
    finally:
        stop.set()
        await signals  # returns at once now that stop is set, with the handlers removed
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        if not relay.done():
            await relay
        await upstream.close()


async def _show_deliveries(upstream: DevUpstream) -> None:
    seen = 0
    while True:
        await asyncio.sleep(0.2)
        total = upstream.status.store.stats()["total"]
        if total <= seen:
            continue
        for item in upstream.status.store.statuses(limit=total - seen):
            got = item["_received"]
            _say(
                f"delivered: {item['status']:<9} message {item['message_id']} "
                f"via {got['transport']} (client {got['client_id']})"
            )
        seen = total
