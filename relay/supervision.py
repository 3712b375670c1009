"""Supervision of the relay's background work: a task or thread that dies ends the relay.

Delivery workers, the lease and ack loops, the connection supervisor, the token refresher and the
spool's writer thread all run in the background. If one of them exits unexpectedly, delivery or
storage stops silently while the HTTP side keeps answering; an orchestrator restarting the process
is the better outcome. So each component hands its long-lived tasks to :func:`watch` (threads
report with :func:`report_failure`); the first unexpected exit is logged critically with the
task's name, ``/healthz`` turns 503 (it reads :func:`failure`), and ``serve`` stops in order and
exits non-zero.

One process-wide supervisor, installed by ``serve`` with :func:`install`: components do not need
it passed through every constructor, and unit tests that run a component alone get the same
critical log line and a readable :func:`failure` without installing anything.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

__all__ = [
    "EXIT_FAILURE",
    "BackgroundFailure",
    "Supervisor",
    "failure",
    "install",
    "report_failure",
    "stopping",
    "uninstall",
    "watch",
]

log = logging.getLogger("relay.supervision")

# EX_SOFTWARE (sysexits.h): an internal error; systemd's Restart=on-failure and every orchestrator
# restart on any non-zero exit, and this one is told apart from a configuration error (2)
EXIT_FAILURE = 70


class BackgroundFailure(Exception):
    """Raised by ``serve`` after it stopped in order because a supervised task or thread died."""

    exit_code = EXIT_FAILURE


class Supervisor:
    """Remembers the first unexpected exit and wakes whoever waits for one."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self.failed: str | None = None
        self.stopping = False
        self._event: asyncio.Event | None = None
        self._listeners: list[Callable[[str], None]] = []

    def on_failure(self, listener: Callable[[str], None]) -> None:
        self._listeners.append(listener)

    async def wait(self) -> str:
        """Return the failure once there is one."""
        if self._event is None:
            self._event = asyncio.Event()
        if self.failed is None:
            await self._event.wait()
        assert self.failed is not None
        return self.failed

    def fail(self, name: str, detail: str) -> None:
        if self.stopping:
            # the relay stops anyway; an error on the way out is still worth a line
            if detail != "it returned":
                log.error("background task %r failed while stopping: %s", name, detail)
            return
        text = f"background task {name!r} stopped unexpectedly: {detail}"
        log.critical("%s; the relay stops so that it can be restarted", text)
        if self.failed is not None:
            return
        self.failed = text
        if self._event is not None:
            self._event.set()
        for listener in self._listeners:
            listener(text)


_current = Supervisor()


def install(supervisor: Supervisor) -> None:
    global _current
    _current = supervisor


def uninstall() -> None:
    install(Supervisor())


def current() -> Supervisor:
    return _current


def failure() -> str | None:
    """The first unexpected exit, or None while everything runs."""
    return _current.failed


def stopping() -> None:
    """From now on exits are expected (shutdown in progress)."""
    _current.stopping = True


def watch(task: asyncio.Task, name: str | None = None) -> asyncio.Task:
    """Treat any end of ``task`` other than cancellation during shutdown as a failure.

    A task that returns normally while the relay is not stopping counts too: these tasks are
    meant to run until cancelled. Components that end a task on purpose (``close``) cancel it;
    a cancelled task is never a failure."""
    label = name or task.get_name()
    supervisor = _current

    def done(t: asyncio.Task) -> None:
        if t.cancelled():
            return
        exc = t.exception()
        if exc is None:
            if not supervisor.stopping:
                supervisor.fail(label, "it returned")
        else:
            supervisor.fail(label, f"{type(exc).__name__}: {exc}")

    task.add_done_callback(done)
    return task


def report_failure(name: str, exc: BaseException) -> None:
    """For threads: report from any thread; the failure is recorded on the event loop."""
    supervisor = _current
    detail = f"{type(exc).__name__}: {exc}"
    loop = supervisor._loop
    if loop is not None and not loop.is_closed():
        try:
            loop.call_soon_threadsafe(supervisor.fail, name, detail)
            return
        except RuntimeError:
            pass
    supervisor.fail(name, detail)
