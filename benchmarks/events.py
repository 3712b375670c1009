"""Event bodies for the benchmarks: every one valid, every one with its own message_id.

Bodies are made from a template split at the message_id, so making millions of them costs a
string join each, not a JSON encode or a validation.
"""

from __future__ import annotations

import os

import orjson

from relay import event
from relay.dev.example import SEED_EVENT

PLACEHOLDER = "00000000-0000-4000-8000-000000000000"


def new_run_tag() -> str:
    """Eight hex digits, different in every run, so no two runs send the same message_id."""
    return os.urandom(4).hex()


def message_id(run: str, stream: int, n: int) -> str:
    return f"{run}-{stream & 0xFFFF:04x}-4000-8000-{n:012x}"


class Template:
    """`body(id)`: the event as bytes with that message_id."""

    def __init__(self, normalised: bool) -> None:
        seed = dict(SEED_EVENT, message_id=PLACEHOLDER)
        raw = event.encode(event.normalise(seed)) if normalised else orjson.dumps(seed)
        self.head, self.tail = raw.split(PLACEHOLDER.encode())

    def body(self, mid: str) -> bytes:
        return self.head + mid.encode() + self.tail


def producer_template() -> Template:
    """What a producer posts (the relay normalises it)."""
    return Template(normalised=False)


def stored_template() -> Template:
    """What the relay stores and sends upstream: the normalised event (with logger_name)."""
    return Template(normalised=True)


def stored_bodies(run: str, count: int, stream: int = 0) -> list[bytes]:
    t = stored_template()
    return [t.body(message_id(run, stream, n)) for n in range(count)]
