"""Slowing delivery down to the backoff's pace while the upstream refuses everything."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from relay.backoff import backoff_ceiling


class Pacer:
    """While requests keep failing for reasons that are not the events' own (the upstream is
    overloaded, refuses every token, has no such route, answers nothing), delivery sends one
    probe at a time, spaced by an exponential backoff bounded by `retry.max_backoff`, instead of
    `max_in_flight` requests as fast as the refusals come back. One success ends it.

    Failures that arrive before the current pause is over are the rest of the burst that was in
    flight when the trouble began: they do not lengthen the pause, or a blip with many requests
    in flight would stop delivery for `max_backoff`."""

    def __init__(
        self, initial: float, cap: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._initial = initial
        self._cap = cap
        self._clock = clock
        self.failures = 0  # read on the hot path: zero while delivery runs freely
        self._next_at = 0.0

    def failed(self) -> None:
        now = self._clock()
        if self.failures and now < self._next_at:
            return
        self.failures += 1
        ceiling = backoff_ceiling(self.failures - 1, self._initial, self._cap)
        # half jitter: relays restarted together spread out, and the pace never falls to zero
        self._next_at = now + random.uniform(0.5 * ceiling, ceiling)

    def succeeded(self) -> None:
        self.failures = 0

    def wait(self) -> float:
        """Seconds until the next probe may go (zero or less: now)."""
        return self._next_at - self._clock()
