"""`relay doctor`: every hop an event takes, checked in order, one line each.

config → spool → credentials → Maskinporten → the status service → the running relay. Each
check is ok, warning, failed or skipped (needs an earlier check that failed). Modules:
`checks` (the result model), `context` (what the hops share), `local` (configuration, spool),
`credentials`, `maskinporten`, `reach` (DNS, TCP, TLS, proxy), `upstream` (the status service,
with the probe request described there), `running` (the relay's /status).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping

from relay.ops.doctor.checks import FAILED, OK, SKIPPED, WARNING, Check, Report
from relay.ops.doctor.context import DEFAULT_TIMEOUT, Context
from relay.ops.doctor.credentials import check_credentials
from relay.ops.doctor.local import check_config, check_spool
from relay.ops.doctor.maskinporten import check_maskinporten
from relay.ops.doctor.running import check_running
from relay.ops.doctor.upstream import check_upstream

__all__ = [
    "DEFAULT_TIMEOUT",
    "FAILED",
    "OK",
    "SKIPPED",
    "WARNING",
    "Check",
    "Report",
    "run_doctor",
]

# the hops after the configuration, which all need it
_LATER_HOPS = ("spool", "credentials", "maskinporten", "upstream", "relay")


async def run_doctor(
    config_path: str | None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    probe_request: bool = True,
    environ: Mapping[str, str] | None = None,
) -> Report:
    """Check every hop; never raises for what a user can get wrong (a failed line instead)."""
    report = Report()
    cfg = check_config(config_path, report)
    if cfg is None:
        for hop in _LATER_HOPS:
            report.skip(hop, "all checks", "config/configuration")
        return report
    ctx = Context(
        cfg,
        report,
        timeout=timeout,
        probe_request=probe_request,
        environ=dict(os.environ if environ is None else environ),
    )
    await _guarded(ctx, "spool", check_spool)
    await _guarded(ctx, "credentials", _sync(check_credentials))
    await _guarded(ctx, "maskinporten", check_maskinporten)
    await _guarded(ctx, "upstream", check_upstream)
    await _guarded(ctx, "relay", check_running)
    ctx.token = None  # dropped as soon as the probes are done
    return report


async def _guarded(ctx: Context, hop: str, check: Callable[[Context], Awaitable[None]]) -> None:
    """Run one hop's checks; a bug in them is a failed line, and the other hops still run."""
    try:
        await check(ctx)
    except Exception as exc:
        ctx.report.fail(
            hop,
            "internal error",
            f"the doctor's {hop} checks stopped: {type(exc).__name__}: {exc}",
            "report this as a bug; the other hops were checked",
        )


def _sync(check: Callable[[Context], None]) -> Callable[[Context], Awaitable[None]]:
    async def run(ctx: Context) -> None:
        check(ctx)

    return run
