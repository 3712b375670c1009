"""Helpers shared by the tests: events, real processes, waiting for a condition.

Test modules import from here, never from one another.
"""

from tests.helpers.events import SEED_EVENT, make_event
from tests.helpers.inprocess import InProcessRelay, inprocess_relay
from tests.helpers.jetstream_rig import *  # noqa: F403 - the names in its __all__ (issue 12)
from tests.helpers.processes import (
    FAST_RETRY,
    RelayProcess,
    UpstreamProcess,
    free_port,
    post,
    received_ids,
    send,
    spool_stats,
)
from tests.helpers.waiting import eventually, wait_until

__all__ = [
    "FAST_RETRY",
    "SEED_EVENT",
    "InProcessRelay",
    "RelayProcess",
    "UpstreamProcess",
    "eventually",
    "free_port",
    "inprocess_relay",
    "make_event",
    "post",
    "received_ids",
    "send",
    "spool_stats",
    "wait_until",
]
