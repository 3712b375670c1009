"""Prometheus metrics (`GET /metrics`).

The parts keep their own plain numbers (sources, spool, delivery, tokens) and
`relay.ops.collectors` reads them at scrape time, so nothing is counted twice; only the spool's
commit durations and the delivery latency histogram are observed here.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)
_COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # counted here and exported at scrape time: prometheus-client's Histogram takes a lock
        # per observation, which showed in profiles at tens of thousands of events a second
        self._latency_counts = [0] * (len(_LATENCY_BUCKETS) + 1)
        self._latency_sum = 0.0
        self.add_collector(self._latency_metric)
        self.commit_seconds = Histogram(
            "relay_spool_commit_seconds",
            "Duration of one spool group commit (write and fsync)",
            buckets=_COMMIT_BUCKETS,
            registry=self.registry,
        )

    def observe_delivered(self, received_at: Iterable[float], now: float) -> None:
        """From the event loop only, so the plain counters need no lock."""
        counts, total, bucket = self._latency_counts, 0.0, bisect.bisect_left
        for t in received_at:
            latency = now - t
            if latency > 0.0:
                total += latency
                counts[bucket(_LATENCY_BUCKETS, latency)] += 1
            else:  # a clock step back: counted as no latency
                counts[0] += 1
        self._latency_sum += total

    def _latency_metric(self) -> Iterable[Metric]:
        buckets, running = [], 0
        for bound, count in zip((*_LATENCY_BUCKETS, math.inf), self._latency_counts, strict=True):
            running += count
            buckets.append((str(float(bound)) if bound != math.inf else "+Inf", running))
        yield HistogramMetricFamily(
            "relay_delivery_latency_seconds",
            "From the ingest commit to the upstream's acknowledgement",
            buckets=buckets,
            sum_value=self._latency_sum,
        )

    def add_collector(self, collect: Callable[[], Iterable[Metric]]) -> None:
        """Numbers read at scrape time from the parts that keep them."""
        self.registry.register(_Collector(collect))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Collector:
    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()

    def describe(self) -> list:
        return []  # unknown until scraped; keeps registration from calling collect()


def gauge(name: str, doc: str, value: float | None, **labels: Any) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    if value is not None:
        family.add_metric([str(v) for v in labels.values()], value)
    return family


def counter(
    name: str,
    doc: str,
    values: Mapping[Any, float] | float,
    *labels: str,
    created: float | None = None,
) -> Metric:
    """A counter family; `values` is one number, or a number per value of `labels` (a tuple of
    values when there are several labels). `created`: since when it counts (Unix time)."""
    if isinstance(values, Mapping):
        family = CounterMetricFamily(name, doc, labels=list(labels))
        for key, value in values.items():
            family.add_metric(key if isinstance(key, tuple) else (key,), value, created=created)
        return family
    return CounterMetricFamily(name, doc, value=values, created=created)
