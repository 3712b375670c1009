"""The console's sampler: a bounded ring of the spool's numbers and the totals' rates."""

from __future__ import annotations

import re

from relay import event
from relay.ops.console_svg import chart
from relay.ops.samples import Sampler
from relay.sources.counters import SourceCounters
from relay.spool import Incoming, MemorySpool
from tests.helpers import make_event


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_the_ring_keeps_the_last_samples_and_rates_come_from_differences() -> None:
    clock = Clock()
    spool = MemorySpool(clock=clock)
    counters = SourceCounters()
    sampler = Sampler(spool, counters, every=10, keep=5, clock=clock)
    for i in range(8):
        counters.received["http"] += 30 * i  # 0, 30, 60+... : the delta grows by 30 each time
        counters.rejected["http", "invalid"] += 1
        await spool.append([Incoming(event.encode(make_event()), "http")])
        sampler.sample()
        clock.now += 10
    assert len(sampler.samples) == 5
    assert [s.depth for s in sampler.samples] == [4, 5, 6, 7, 8]
    ingested = [rate for _, rate in sampler.rates("ingested")]
    # per minute: 30*i events in 10 s
    assert ingested == [60.0 * 30 * i / 10 for i in (4, 5, 6, 7)]
    assert [rate for _, rate in sampler.rates("refused")] == [6.0] * 4
    assert [v for _, v in sampler.series("depth")] == [4.0, 5.0, 6.0, 7.0, 8.0]
    oldest = sampler.samples[-1].oldest_age
    assert oldest is not None and oldest == 70.0


async def test_rates_skip_intervals_without_time_and_never_go_negative() -> None:
    clock = Clock()
    counters = SourceCounters()
    sampler = Sampler(MemorySpool(clock=clock), counters, every=10, keep=10, clock=clock)
    counters.received["http"] = 100
    sampler.sample()
    sampler.sample()  # same instant: no interval
    clock.now += 20
    counters.received["http"] = 40  # a replaced counter: counted as nothing, not as minus
    sampler.sample()
    assert sampler.rates("ingested") == [(clock.now, 0.0)]
    assert sampler.samples[-1].delivered == 0 and sampler.connected_since is None


def test_a_chart_draws_the_window_with_its_largest_value_and_escapes_its_title() -> None:
    now = 10_000.0
    points = [(now - 7200, 999.0), (now - 600, 5.0), (now - 300, 40.0), (now, 12.0)]
    svg = chart("<b>depth</b>", points, now, 3600)
    line = re.search(r'<polyline class="line" points="([^"]+)"', svg)
    assert line is not None and len(line.group(1).split()) == 3, "the point before the window"
    assert ">40</text>" in svg and ">999<" not in svg and "-60 min" in svg
    assert "<b>" not in svg and "&lt;b&gt;depth&lt;/b&gt;" in svg
    assert "no samples yet" in chart("empty", [], now, 3600)
