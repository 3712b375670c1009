"""How a source tells that the spool refuses its events: one line when it starts, one when it
ends (used by the TCP, UDP and RELP listeners)."""

from __future__ import annotations

import logging
import time

from relay.spool import SpoolRefused

__all__ = ["Refusals"]

log = logging.getLogger("relay.sources.tcp")  # where these lines have always come from


class Refusals:
    """One log line when the spool starts refusing a source's events and one when it stores
    them again, however many retries and connections lie in between. A nearly full spool
    takes some events and refuses others for as long as delivery frees space bit by bit, so
    the episode ends only with a success after `QUIET` seconds without a refusal."""

    QUIET = 10.0

    def __init__(self, source: str, consequence: str, *, lost: bool = False) -> None:
        self.source = source
        self.consequence = consequence
        self.lost = lost  # refused items are gone (UDP), not held for a retry (TCP)
        self.since: float | None = None
        self.last = 0.0
        self.refused_items = 0

    def refused(self, exc: SpoolRefused, items: int) -> None:
        self.refused_items += items
        self.last = time.monotonic()
        if self.since is None:
            self.since = self.last
            log.warning("%s: the spool refuses events (%s); %s", self.source, exc, self.consequence)

    def stored(self) -> None:
        if self.since is None or time.monotonic() - self.last < self.QUIET:
            return
        lost = f"; {self.refused_items} were lost" if self.lost else ""
        log.warning(
            "%s: the spool stores events again; it refused them for %.1f s%s",
            self.source,
            self.last - self.since,
            lost,
        )
        self.since = None
        self.refused_items = 0
