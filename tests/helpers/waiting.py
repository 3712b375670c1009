"""Waiting for a condition, never for a fixed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


def wait_until(
    check: Callable[[], object],
    timeout: float,
    what: str,
    detail: Callable[[], str] | None = None,
    interval: float = 0.05,
) -> None:
    """Poll `check` until it returns something true; fail naming `what` (and, if given, what
    `detail()` says then, e.g. a process's log) after `timeout` seconds. An exception from
    `check` propagates at once: raise one for a condition that can no longer come true."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            message = f"timed out after {timeout} s waiting for {what}"
            raise AssertionError(message + (f":\n{detail()}" if detail else ""))
        time.sleep(interval)


async def eventually(
    check: Callable[[], object | Awaitable[object]],
    timeout: float = 10.0,
    what: str = "a condition",
    detail: Callable[[], str] | None = None,
    interval: float = 0.02,
) -> None:
    """The asyncio form of `wait_until`: `check` may be a plain or an async callable."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            message = f"timed out after {timeout} s waiting for {what}"
            raise AssertionError(message + (f":\n{detail()}" if detail else ""))
        await asyncio.sleep(interval)
