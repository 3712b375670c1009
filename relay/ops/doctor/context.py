"""What the doctor's hops share: the configuration, the limits, the report, and what an earlier
hop found that a later one needs (the credentials, the access token). The token stays in memory
here and goes nowhere but into the probe request's metadata."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from relay.auth.credentials import Credentials
from relay.auth.tokens import TokenResponse
from relay.config import Config
from relay.ops.doctor.checks import Report

__all__ = ["DEFAULT_TIMEOUT", "Context"]

DEFAULT_TIMEOUT = 5.0  # seconds per network step


@dataclass
class Context:
    cfg: Config
    report: Report
    timeout: float = DEFAULT_TIMEOUT
    probe_request: bool = True  # send the upstream one request it acknowledges and drops
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    creds: Credentials | None = None
    token: TokenResponse | None = field(default=None, repr=False)
    claims: dict[str, Any] = field(default_factory=dict)  # the token's, for display only
