"""Exponential backoff: the delay before a next attempt where only a delay is computed (an event's
next attempt, the HTTP sink's probe of an unreachable upstream, the refetch of a refused token).

The retry loops (RSocket reconnects, the token endpoint) run in tenacity with
`wait_random_exponential(multiplier=initial, max=cap)`: the same curve and the same jitter.
"""

from __future__ import annotations

import random


def backoff_ceiling(attempt: int, initial: float, cap: float) -> float:
    """The longest wait before retry number `attempt` (0-based): min(cap, initial * 2**attempt)."""
    return min(cap, initial * 2 ** min(max(attempt, 0), 60))


def backoff_delay(attempt: int, initial: float, cap: float) -> float:
    """Seconds to wait before retry number `attempt` (0-based), with full jitter: uniform in
    [0, backoff_ceiling], so many clients retrying at once spread out."""
    return random.uniform(0.0, backoff_ceiling(attempt, initial, cap))
