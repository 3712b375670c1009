"""The operator's signals: SIGTERM / SIGINT stop the relay, SIGHUP reloads its configuration.
The loop's handlers are removed again afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator

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


@contextlib.contextmanager
def on_reload_signal(reload: Callable[[], None]) -> Iterator[None]:
    """Call `reload` on SIGHUP while inside. Without it SIGHUP would end the process: installed
    before anything starts, so a reload asked for during start-up is not a kill."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, reload)
    except (RuntimeError, ValueError, NotImplementedError):
        # not the main thread (a relay embedded in a test or a host program): no SIGHUP here
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
