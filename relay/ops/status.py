"""`GET /status`: ok or degraded, with every reason that applies and the numbers behind them.

Health includes progress: a relay with a backlog that delivers nothing is not healthy, however
well its event loop answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from relay import __version__
from relay.config import Config
from relay.delivery.setup import DeliveryParts
from relay.spool import Spool, SpoolStats

if TYPE_CHECKING:
    from relay.ops.reload import ConfigLoads


class StatusReport:
    def __init__(
        self,
        cfg: Config,
        spool: Spool,
        delivery: DeliveryParts | None,
        clock: Callable[[], float] = time.time,
        loads: ConfigLoads | None = None,
    ) -> None:
        self._stall_after = cfg.health.stall_after
        self._loads = loads
        self._upstream = cfg.upstream
        self._spool = spool
        self._delivery = delivery
        self._clock = clock
        self._started = clock()

    def set_stall_after(self, seconds: float) -> None:
        self._stall_after = seconds  # a reload's health.stall_after

    def report(self) -> dict[str, Any]:
        now = self._clock()
        stall = self._stall_after
        spool = self._spool.stats()
        oldest_age = now - spool.oldest_received_at if spool.oldest_received_at else None
        reasons = _spool_reasons(spool)
        body: dict[str, Any] = {
            "status": "ok",
            "reasons": reasons,
            "version": __version__,
            "uptime_seconds": round(now - self._started, 1),
            "spool": {
                "events": spool.events,
                "bytes": spool.bytes,
                "capacity_bytes": spool.capacity_bytes,
                "oldest_event_age_seconds": _round(oldest_age),
                "dead_letters": spool.dead_letters,
                "dead_letter_bytes": spool.dead_letter_bytes,
                "invalid_bytes": spool.invalid_bytes,
                "invalid_capacity_bytes": spool.invalid_capacity_bytes,
                "invalid_not_kept": spool.invalid_not_kept,
                "dedup_log_bytes": spool.dedup_log_bytes,
                "quarantined": spool.set_aside,
                "refusing": spool.refusing,
                "corrupt": spool.corrupt,
            },
        }
        parts = self._delivery
        if parts is None:
            reasons.append("delivery is off: no Maskinporten credentials are configured")
        else:
            body.update(self._delivery_section(parts, now, spool.events, reasons))
        if stall and parts is not None and spool.events and self._stalled(parts, now):
            reasons.append(
                f"backlog of {spool.events} event(s) and nothing delivered for more than "
                f"{stall:.0f} s"
            )
        if self._loads is not None:
            body["config"] = self._loads.report(now)
            if self._loads.reason():
                reasons.append(self._loads.reason())
        body["status"] = "degraded" if reasons else "ok"
        return body

    def _delivery_section(
        self, parts: DeliveryParts, now: float, backlog: int, reasons: list[str]
    ) -> dict[str, Any]:
        sink, stats, tokens = parts.sink, parts.delivery.stats, parts.tokens
        up = self._upstream
        address = up.address
        down_for = now - sink.down_since if sink.down_since is not None else None
        if down_for is not None and down_for > self._stall_after:
            reasons.append(f"upstream {address} unreachable for {down_for:.0f} s")
        if sink.not_ready():
            reasons.append(sink.not_ready())
        if tokens.last_error:
            reasons.append(f"token endpoint failing: {tokens.last_error}")
        last = stats.last_delivery_at
        return {
            "upstream": {
                "transport": up.transport,
                "address": address,
                "proxy": getattr(sink, "proxy", None),  # masked: http://user:***@host:port
                "connected": sink.connected,
                "unreachable_seconds": _round(down_for),
            },
            "delivery": {
                "delivered": stats.delivered,
                "in_flight": stats.in_flight,
                "redelivered": stats.redelivered,
                "retries": dict(stats.retries),
                "dead_lettered": dict(stats.dead_lettered),
                "last_delivery_age_seconds": _round(now - last if last else None),
                "last_error": stats.last_error,
            },
            "token": {
                "expires_in_seconds": _round(tokens.expires_in()),
                "fetches": dict(tokens.fetches),
                "last_error": tokens.last_error,
            },
        }

    def _stalled(self, parts: DeliveryParts, now: float) -> bool:
        last = parts.delivery.stats.last_delivery_at
        since = last if last is not None else self._started
        return now - since > self._stall_after


def _spool_reasons(spool: SpoolStats) -> list[str]:
    """What makes the spool a reason for "degraded", in the order an operator should look."""
    shares = f"{spool.invalid_bytes} of {spool.invalid_capacity_bytes} bytes"
    return [
        reason
        for present, reason in (
            (spool.refusing, f"spool refuses new events: {spool.refusing}"),
            (
                spool.set_aside,
                f"spool quarantine present ({len(spool.set_aside)}): {', '.join(spool.set_aside)}",
            ),
            (spool.dead_letters, f"{spool.dead_letters} dead letter(s): see `relay dlq list`"),
            (
                spool.invalid_not_kept,
                f"{spool.invalid_not_kept} invalid item(s) not kept: invalid input fills its "
                f"share of the spool ({shares}); fix the producer, or `relay dlq purge`",
            ),
        )
        if present
    ]


def _round(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None
