"""The upstream delivery is measured against: `relay dev-upstream`, the Maskinporten and
status-service stand-ins, one process for the relay and the bare baseline client alike.

`reset()` before a round, `wait(n)` until n events are acknowledged, giving events/s timed at
the upstream from its first acknowledgement to its last (so start-up and connecting are left
out, for relay and baseline alike).

For the delivery scenarios it runs with `--ack-only`: every request's metadata, route, token
(each distinct token verified once, then its expiry and scope) and events are checked as
always, but counted instead of stored, so the figures measure the sender, not the stand-in's
SQLite. The latency scenario needs the stored events' arrival times and runs it storing.
"""

from __future__ import annotations

import time
import urllib.request

import orjson

from benchmarks.procs import Proc, Procs, http_get

# how often wait() asks the stand-in for its counters: cheap for it (no SQL), and fine enough
# for when the wait ends (the rate is timed by the stand-in itself)
_POLL = 0.1


class StandIn:
    name = "stand-in"

    def __init__(self, procs: Procs, *, ack_only: bool = True) -> None:
        self.up = procs.upstream(ack_only=ack_only).start()
        self.config = self.up.config
        self.env: dict[str, str] = {}
        self._since = (0, 0)
        self._token = ""

    @property
    def port(self) -> int:
        return self.up.ports["rsocket"]

    @property
    def pid(self) -> int:
        return self.up.pid

    def stop(self) -> None:
        self.up.stop()

    def restart(self) -> None:
        """Start again after stop(): same ports and PKI, so a relay's configuration holds."""
        self.up.start()
        self._token = ""  # a new Maskinporten stand-in signs with a new key

    def reset(self) -> None:
        """From now on only what arrives counts."""
        request = urllib.request.Request(self.up.status_url + "/admin/stats/reset", b"")
        with urllib.request.urlopen(request, timeout=10) as r:
            r.read()
        if not self.up.ack_only:
            received = self.up.received()
            self._since = received.mark()
            received.close()

    def received(self):
        """The stored events since reset() (read from the store; not in ack-only mode)."""
        return self.up.received(self._since)

    def acked(self) -> dict:
        """{"requests", "events", "first_at", "last_at"} since reset()."""
        return orjson.loads(http_get(self.up.status_url + "/api/stats"))["acked"]

    def token(self) -> str:
        self._token = self._token or self.up.token()  # valid for an hour
        return self._token

    def wait(self, n: int, timeout: float, sender: Proc | None = None) -> dict:
        deadline = time.monotonic() + timeout
        while (acked := self.acked())["events"] < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the stand-in acknowledged {acked['events']} of {n} events")
            if sender is not None:
                sender.check_alive("the sender")
            self.up.check_alive("the stand-in")
            time.sleep(_POLL)
        events, requests = acked["events"], acked["requests"]
        # the events after the first request over the time from its ack to the last one's; the
        # first request's size is taken as the mean (they are all the same size here)
        after_first = events - events / requests
        rate = after_first / max(acked["last_at"] - acked["first_at"], 1e-9)
        return {"events_per_s": round(rate, 1), "events": events}
