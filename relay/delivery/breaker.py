"""Telling the upstream's trouble from the events': the breaker.

While (nearly) every answer is a refusal, a refusal says nothing about the event it was for, so it
counts against no event. While requests keep failing for reasons that are not the events' own (the
upstream is overloaded, refuses every token, has no such route, answers nothing), delivery sends one
probe at a time, spaced by an exponential backoff bounded by `retry.max_backoff`, instead of
`max_in_flight` requests as fast as the failures come back. One success ends it.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque

from relay.backoff import backoff_ceiling

# When most recent answers are refusals (of any kind), none of them counts against an event.
_WINDOW = 100
_MIN_ANSWERS = 20
_SHARE = 0.5


class Breaker:
    """Owns the recent answers and the probing pace. Times are the event loop's, the clock the
    pauses are slept on (so a test's virtual clock drives both)."""

    def __init__(self, initial: float, cap: float) -> None:
        self._initial = initial
        self._cap = cap
        self._recent: deque[bool] = deque(maxlen=_WINDOW)  # True: a refusal
        self.failures = 0  # read on the hot path: zero while delivery runs freely
        self._next_at = 0.0

    def set_pace(self, initial: float, cap: float) -> None:
        self._initial, self._cap = initial, cap  # the pause under way keeps its end

    def answered(self, refused: bool) -> None:
        self._recent.append(refused)

    def refusing_everything(self) -> bool:
        recent = self._recent
        return len(recent) >= _MIN_ANSWERS and sum(recent) > _SHARE * len(recent)

    def failed(self) -> None:
        """A request failed for the upstream's reasons. Failures that arrive before the current
        pause is over are the rest of the burst that was in flight when the trouble began: they
        do not lengthen the pause, or a blip with many requests in flight would stop delivery
        for `max_backoff`."""
        now = asyncio.get_running_loop().time()
        if self.failures and now < self._next_at:
            return
        self.failures += 1
        ceiling = backoff_ceiling(self.failures - 1, self._initial, self._cap)
        # half jitter: relays restarted together spread out, and the pace never falls to zero
        self._next_at = now + random.uniform(0.5 * ceiling, ceiling)

    def succeeded(self) -> None:
        self.failures = 0

    def pause(self) -> float:
        """Seconds until the next probe may go (zero or less: now)."""
        return self._next_at - asyncio.get_running_loop().time()
