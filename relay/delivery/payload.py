"""The data of one upstream request."""

from __future__ import annotations


def request_data(bodies: list[bytes], batch_size: int) -> bytes:
    """One event as its JSON object; with batching on, a JSON array of them (an upstream that
    accepts arrays only: the real service does not)."""
    if batch_size == 1 and len(bodies) == 1:
        return bodies[0]
    return b"[" + b",".join(bodies) + b"]"
