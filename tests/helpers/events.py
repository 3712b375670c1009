"""Events for tests: a valid example event with a fresh message_id."""

from __future__ import annotations

import uuid

from relay.dev.example import SEED_EVENT

__all__ = ["SEED_EVENT", "make_event"]


def make_event(**overrides: object) -> dict:
    """A valid event with a fresh message_id (so it is never a duplicate of another)."""
    event = dict(SEED_EVENT, message_id=str(uuid.uuid4()))
    event.update(overrides)
    return event
