"""What the configuration hands the spool backend as its own settings (``open_spool(options=)``).

The spool imports no config, so the server and the commands pass it a plain mapping: for
"jetstream" the fields of ``relay.spool.jetstream.options.JetStreamOptions``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from relay.config.model import Config

__all__ = ["MIN_MAX_ACK_PENDING", "spool_options"]

# JetStream's default for a consumer; delivery may need more, never less.
MIN_MAX_ACK_PENDING = 10_000


def spool_options(cfg: Config) -> dict[str, Any] | None:
    """The backend's options for ``cfg``, or None when its backend takes none."""
    if cfg.spool.backend != "jetstream":
        return None
    options = dataclasses.asdict(cfg.spool.jetstream)
    options["servers"] = list(cfg.spool.jetstream.servers)
    options["connect_timeout"] = float(cfg.spool.jetstream.connect_timeout)
    up = cfg.upstream
    # An event is redelivered to another relay once ack_wait passes unanswered; twice the
    # request timeout leaves room for a whole attempt (the backend also extends it while held).
    options["ack_wait"] = 2 * up.request_timeout
    # the relay never holds more leased than it has in flight, so JetStream must let it lease
    # at least that many
    options["max_ack_pending"] = max(MIN_MAX_ACK_PENDING, up.max_in_flight * up.batch_size)
    return options
