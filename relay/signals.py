"""Waiting for the operator's SIGTERM / SIGINT, with the loop's handlers restored afterwards."""

from __future__ import annotations

import asyncio
import signal

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def until_signalled(stop: asyncio.Event | None = None) -> None:
    """Return on SIGTERM or SIGINT (or when `stop` is set). The handlers are removed again on
    the way out, so a second signal during shutdown gets Python's default behaviour."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)
