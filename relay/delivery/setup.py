"""Building the delivery side from the configuration: token provider, sink, loop."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from relay.auth.credentials import Credentials, load_credentials
from relay.auth.tokens import TokenProvider
from relay.config import Config, MaskinportenConfig, RetryConfig
from relay.delivery.http_sink import HttpSink
from relay.delivery.loop import Delivery
from relay.delivery.rsocket.sink import RSocketSink
from relay.delivery.sink import Sink
from relay.spool import Spool

log = logging.getLogger("relay.delivery")


@dataclass
class DeliveryParts:
    tokens: TokenProvider
    sink: Sink
    delivery: Delivery

    async def start(self) -> None:
        await self.tokens.start()
        await self.sink.start()
        await self.delivery.start()

    def set_retry(self, retry: RetryConfig) -> None:
        """A reload's [retry]: delivery's backoff and max_rejections from the next failure on.
        The token refresher's and the upstream connection's own redial pacing keep the values
        they started with (their retry loops are built once); a restart applies them there."""
        self.delivery.set_retry(retry)

    async def stop(self, timeout: float) -> None:
        await self.delivery.stop(timeout)
        await self.sink.close()
        await self.tokens.close()


def credentials_configured(mp: MaskinportenConfig) -> bool:
    return bool(mp.client_id or mp.keystore or mp.key_file or mp.cert_file or mp.kid)


def load_delivery_credentials(cfg: Config) -> Credentials | None:
    """The Maskinporten credentials, or None (with a loud log line) when none are configured.

    Raises UserError for credentials that are configured but unusable, before anything starts."""
    if not credentials_configured(cfg.maskinporten):
        log.warning(
            "DELIVERY IS OFF: no Maskinporten credentials are configured (maskinporten.client_id "
            "and keystore or key_file); events are accepted and kept in the spool until they are"
        )
        return None
    return load_credentials(cfg.maskinporten)


def build_delivery(
    cfg: Config,
    spool: Spool,
    creds: Credentials,
    on_delivered: Callable[[Iterable[float], float], None] | None = None,
) -> DeliveryParts:
    """`on_delivered(received_at_times, now)` is told of every delivered event (for latency)."""
    tokens = TokenProvider(
        cfg.maskinporten,
        creds,
        initial_backoff=cfg.retry.initial_backoff,
        max_backoff=cfg.retry.max_backoff,
    )
    sink_type = RSocketSink if cfg.upstream.transport == "rsocket" else HttpSink
    sink = sink_type(cfg.upstream, cfg.retry, tokens)
    delivery = Delivery(spool, sink, cfg.upstream, cfg.retry, on_delivered=on_delivered)
    return DeliveryParts(tokens, sink, delivery)
