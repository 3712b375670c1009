"""Exponential backoff with full jitter, shared by reconnects, token fetches and event retries."""

from __future__ import annotations

from types import SimpleNamespace

from tenacity import wait_random_exponential


def backoff_delay(attempt: int, initial: float, cap: float) -> float:
    """Seconds to wait before retry number `attempt` (0-based): uniform in
    [0, min(cap, initial * 2**attempt)], so many clients retrying at once spread out."""
    wait = wait_random_exponential(multiplier=initial, max=cap)
    return wait(SimpleNamespace(attempt_number=min(attempt, 60) + 1))
