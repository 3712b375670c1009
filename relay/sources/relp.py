"""RELP input (acknowledged syslog, as rsyslog's omrelp sends it). Placeholder: being written."""

from __future__ import annotations

from dataclasses import dataclass

from relay.config import RelpIngestConfig
from relay.errors import UserError
from relay.sources.intake import Intake
from relay.sources.tls import ListenerTLS

__all__ = ["RelpSource", "start_relp"]


@dataclass
class RelpSource:
    """The running RELP listener (None when off)."""

    port: int | None = None

    async def close(self) -> None:
        return None


async def start_relp(
    cfg: RelpIngestConfig, intake: Intake, tls: ListenerTLS | None = None
) -> RelpSource:
    if cfg.listen:
        raise UserError("ingest.relp.listen: RELP input is not available yet")
    return RelpSource()
