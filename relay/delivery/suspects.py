"""Finding an event that kills the connection, without taking other events with it.

An event that was in flight on `_SUSPECT_LOSSES` connection losses in a row, with no success in
between, is a suspect: from then on it is sent alone, nothing else in flight. A suspect that was
alone on the connection when it died `retry.max_rejections` times is dead-lettered.
"""

from __future__ import annotations

from collections import deque

from relay.spool import Leased

_SUSPECT_LOSSES = 2


class Suspects:
    """Owns, per event, the connection losses it was in flight on since its last success, and
    the suspects leased and waiting to be sent alone."""

    def __init__(self) -> None:
        self._lost: dict[int, int] = {}
        self._waiting: deque[Leased] = deque()
        self._alone: int | None = None  # the suspect in flight (nothing else is)

    @property
    def active(self) -> bool:
        """A suspect is in flight or waiting: one request at a time."""
        return self._alone is not None or bool(self._waiting)

    def set_aside(self, events: list[Leased]) -> list[Leased]:
        """The events that may go together; the suspects among them wait to go alone."""
        lost = self._lost
        if not lost:
            return events
        others = []
        for e in events:
            if lost.get(e.id, 0) >= _SUSPECT_LOSSES:
                self._waiting.append(e)
            else:
                others.append(e)
        return others

    def next_alone(self) -> Leased | None:
        """The next suspect to send, now counted as the one in flight."""
        if not self._waiting:
            return None
        event = self._waiting.popleft()
        self._alone = event.id
        return event

    def finished(self, chunk: list[Leased]) -> None:
        """The request carrying `chunk` is over, whatever became of it."""
        if self._alone is not None and chunk[0].id == self._alone:
            self._alone = None

    def connection_lost(self, chunk: list[Leased], max_losses: int) -> list[Leased]:
        """Count a loss against each event of `chunk`; the ones now doomed: alone on the
        connection when it died for the `max_losses`th time."""
        lost = self._lost
        doomed = []
        for e in chunk:
            n = lost[e.id] = lost.get(e.id, 0) + 1
            if e.id == self._alone and n >= max_losses:
                doomed.append(e)
        return doomed

    def delivered(self, chunk: list[Leased]) -> int:
        """Forget the losses of delivered events; how many of them had been lost in flight."""
        lost = self._lost
        if not lost:
            return 0
        return sum(1 for e in chunk if lost.pop(e.id, None) is not None)

    def forget(self, chunk: list[Leased]) -> None:
        for e in chunk:
            self._lost.pop(e.id, None)

    def drop_waiting(self) -> None:
        """Stopping: the waiting suspects stay in the spool (their leases end with the run)."""
        self._waiting.clear()
