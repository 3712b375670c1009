"""Scrape-time metrics: numbers the sources, spool, delivery and token provider already keep."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from prometheus_client.core import GaugeMetricFamily, Metric

from relay.delivery.setup import DeliveryParts
from relay.ops.metrics import Metrics, counter, gauge
from relay.sources.counters import ListenerCounts, SourceCounters
from relay.sources.tls import certificates_expire, handshake_failures
from relay.spool import Spool


def register(
    metrics: Metrics, spool: Spool, delivery: DeliveryParts | None, sources: SourceCounters
) -> None:
    metrics.add_collector(_source_metrics(sources))
    metrics.add_collector(_spool_metrics(spool))
    metrics.add_collector(_dead_letter_metrics(delivery, sources))
    if delivery is not None:
        metrics.add_collector(_delivery_metrics(delivery))


def register_listeners(
    metrics: Metrics,
    tcp: Mapping[str, ListenerCounts | None],
    udp_drops: Callable[[], int | None],
) -> None:
    """The listeners' own numbers: `tcp` by source name (None for a listener that is off), and
    how to read the kernel's drops on the syslog UDP socket."""
    metrics.add_collector(lambda: udp_kernel_drops(udp_drops()))
    metrics.add_collector(lambda: tcp_connections(tcp))
    metrics.add_collector(tls_listeners)


def _source_metrics(sources: SourceCounters) -> Callable[[], Iterable[Metric]]:
    # the counters start with the relay: their _created sample says so, as for any counter
    started = time.time()

    def collect() -> Iterable[Metric]:
        yield counter(
            "relay_received_events",
            "Events received from producers",
            sources.received,
            "source",
            created=started,
        )
        yield counter(
            "relay_rejected_events",
            "Events refused at ingest (invalid, too large, or the spool refused them)",
            sources.rejected,
            "source",
            "reason",
            created=started,
        )
        yield counter(
            "relay_duplicate_events",
            "Exact duplicates acknowledged but stored once",
            sources.duplicates,
            "source",
            created=started,
        )
        yield counter(
            "relay_skipped_lines",
            "Lines that are not status events (another logger_name), skipped on purpose",
            sources.skipped,
            "source",
            "reason",
            created=started,
        )

    return collect


def _dead_letter_metrics(
    delivery: DeliveryParts | None, sources: SourceCounters
) -> Callable[[], Iterable[Metric]]:
    def collect() -> Iterable[Metric]:
        by_reason = Counter(sources.dead_lettered)
        if delivery is not None:
            by_reason.update(delivery.delivery.stats.dead_lettered)
        yield counter(
            "relay_dead_lettered_events",
            "Events moved to the dead-letter table (at ingest or by delivery), by reason",
            dict(by_reason),
            "reason",
        )

    return collect


def _spool_metrics(spool: Spool) -> Callable[[], Iterable[Metric]]:
    def collect() -> Iterable[Metric]:
        s = spool.stats()
        age = max(0.0, time.time() - s.oldest_received_at) if s.oldest_received_at else 0.0
        yield gauge("relay_spool_events", "Events waiting in the spool", s.events)
        yield gauge("relay_spool_bytes", "Bytes of waiting events", s.bytes)
        yield gauge("relay_spool_capacity_bytes", "spool.max_bytes", s.capacity_bytes)
        yield gauge("relay_spool_oldest_event_age_seconds", "Age of the oldest waiting event", age)
        yield gauge("relay_dead_letter_events", "Events in the dead-letter table", s.dead_letters)
        yield gauge("relay_spool_quarantined_files", "Quarantined spool files", len(s.set_aside))
        yield gauge(
            "relay_spool_refusing", "1 while the spool refuses writes", int(bool(s.refusing))
        )
        yield gauge(
            "relay_spool_corrupt",
            "1 once the spool file was found corrupt while running (see README)",
            int(bool(s.corrupt)),
        )
        yield gauge(
            "relay_spool_invalid_bytes",
            "Bytes of invalid input kept as dead letters (part of capacity_bytes)",
            s.invalid_bytes,
        )
        yield gauge(
            "relay_spool_invalid_capacity_bytes",
            "The share of spool.max_bytes that invalid input may fill",
            s.invalid_capacity_bytes,
        )
        yield counter(
            "relay_invalid_input_not_kept",
            "Invalid items not stored because invalid input filled its share of the spool",
            s.invalid_not_kept,
        )
        yield gauge(
            "relay_spool_dedup_log_bytes",
            "Bytes of the duplicate-detection log (part of capacity_bytes)",
            s.dedup_log_bytes,
        )

    return collect


def _delivery_metrics(parts: DeliveryParts) -> Callable[[], Iterable[Metric]]:
    def collect() -> Iterable[Metric]:
        stats = parts.delivery.stats
        yield counter("relay_delivered_events", "Events acknowledged upstream", stats.delivered)
        yield counter(
            "relay_delivery_retries",
            "Events given back to the spool for another try, by reason",
            dict(stats.retries),
            "reason",
        )
        yield counter(
            "relay_redelivered_events",
            "Events sent again after a connection died with them in flight",
            stats.redelivered,
        )
        yield gauge("relay_delivery_in_flight", "Requests outstanding upstream", stats.in_flight)
        yield gauge(
            "relay_upstream_connected", "1 while the upstream answers", int(parts.sink.connected)
        )
        expires = parts.tokens.expires_in()
        yield gauge(
            "relay_token_expires_in_seconds",
            "Seconds left on the access token (0 when there is none)",
            expires or 0.0,
        )
        yield counter(
            "relay_token_fetches",
            "Access-token requests to Maskinporten, by result",
            dict(parts.tokens.fetches),
            "result",
        )
        # the business certificate sent as x5c; absent with a key id (no certificate is sent)
        # and follows a reload that renews it
        not_after = parts.tokens.creds.not_after
        if not_after is not None:
            yield gauge(
                "relay_certificate_expiry_timestamp_seconds",
                "When the Maskinporten business certificate expires (Unix time)",
                not_after.timestamp(),
            )

    return collect


def udp_kernel_drops(drops: int | None) -> Iterable[Metric]:
    """Datagrams the kernel dropped before the relay read them: UDP's own, silent losses."""
    if drops is not None:
        yield counter(
            "relay_syslog_udp_kernel_drops",
            "Datagrams the kernel dropped on the syslog UDP socket (receive buffer full)",
            drops,
        )


def tcp_connections(listeners: Mapping[str, ListenerCounts | None]) -> Iterable[Metric]:
    """Per TCP listener (by source name): connections open, refused over the limit, broken off.

    `listeners` maps a source name to its counts, or None when that listener is off."""
    running = {name: tcp for name, tcp in listeners.items() if tcp is not None}
    if not running:
        return
    yield counter(
        "relay_tcp_connections_refused",
        "TCP connections closed at once because the listener had max_connections open",
        {name: tcp.refused_connections for name, tcp in running.items()},
        "source",
    )
    yield counter(
        "relay_tcp_connections_broken",
        "TCP connections closed by the relay because their framing could not be followed",
        {name: tcp.broken_connections for name, tcp in running.items()},
        "source",
    )
    family = GaugeMetricFamily(
        "relay_tcp_connections", "Open TCP connections per listener", labels=["source"]
    )
    for name, tcp in running.items():
        family.add_metric([name], tcp.connections)
    yield family


def tls_listeners() -> Iterable[Metric]:
    """Per TLS listener (by section): handshakes that failed or were refused over the limit, and
    when its certificate expires."""
    expiry = GaugeMetricFamily(
        "relay_tls_certificate_expiry_timestamp_seconds",
        "When the TLS certificate a listener serves expires (Unix time)",
        labels=["listener"],
    )
    for section, when in certificates_expire().items():
        expiry.add_metric([section], when)
    yield expiry
    failures = handshake_failures()
    if failures:
        yield counter(
            "relay_tls_handshake_failures",
            "TLS handshakes on a listener that failed (no or a bad client certificate, not TLS, "
            "too slow) or were refused (too many at once)",
            failures,
            "listener",
        )
