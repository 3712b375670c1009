"""The doctor's first hops, on this machine: the configuration, and the spool (writable, free
space, what its admin side reports: quarantined stores, refusals, dead letters).

The spool is read through `relay.spool.api.open_admin` only. "Writable" is checked on the
directory (a temporary file made and removed there) for the SQLite backend; a JetStream spool
is checked by reading its stream's counters from the cluster.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from relay.config import Config, format_size, load_config, spool_options
from relay.config.advice import config_advice
from relay.errors import UserError, one_line
from relay.ops.doctor.checks import Report, split_advice
from relay.ops.doctor.context import Context
from relay.sources.tls import listeners_tls
from relay.spool import SpoolError, SpoolStats, open_admin

__all__ = ["check_config", "check_spool"]

HOP_CONFIG = "config"
HOP_SPOOL = "spool"
# below this much free space the spool cannot take much more than a burst
_LOW_SPACE = 64 * 1024 * 1024


def check_config(path: str | None, report: Report) -> Config | None:
    """Load and validate the configuration as `relay run` does; None when it does not load."""
    shown = path or "(no file: defaults and RELAY_* variables)"
    try:
        cfg = load_config(path)
    except UserError as exc:
        report.fail(
            HOP_CONFIG,
            "configuration",
            str(exc),
            "fix the setting named; `relay check-config` shows the whole configuration",
        )
        return None
    report.ok(HOP_CONFIG, "configuration", f"valid: {shown}")
    try:
        listeners_tls(cfg)  # the listeners' certificates load as `relay run` loads them
    except UserError as exc:
        report.fail(HOP_CONFIG, "listener certificates", str(exc), "fix the file named")
    for advice in config_advice(cfg):
        if advice.level >= logging.WARNING:
            report.warn(HOP_CONFIG, "advice", advice.text)
    return cfg


async def check_spool(ctx: Context) -> None:
    cfg = ctx.cfg
    report = ctx.report
    backend = cfg.spool.backend
    if backend == "memory":
        report.warn(
            HOP_SPOOL,
            "writable",
            'spool.backend is "memory": events are kept in the relay\'s memory and lost on exit',
            'use spool.backend = "sqlite" (the default) or "jetstream" outside tests',
        )
        return
    if backend == "sqlite" and not _directory_checks(
        Path(cfg.spool.path), cfg.spool.max_bytes, report
    ):
        return
    try:
        admin = open_admin(
            backend, cfg.spool.path, max_bytes=cfg.spool.max_bytes, options=spool_options(cfg)
        )
        # a JetStream spool reads the cluster: bounded like every other network step
        async with asyncio.timeout(max(ctx.timeout, 10.0)):
            stats = await admin.stats()
    except (SpoolError, UserError) as exc:
        report.fail(
            HOP_SPOOL, "state", *split_advice(one_line(str(exc)), "see `relay spool check`")
        )
        return
    except TimeoutError:
        report.fail(
            HOP_SPOOL,
            "state",
            f"the {backend} spool did not answer within {max(ctx.timeout, 10.0):g} s",
            "check spool.jetstream.servers and that the cluster runs",
        )
        return
    if backend == "jetstream":
        report.ok(
            HOP_SPOOL,
            "writable",
            f"stream {cfg.spool.jetstream.stream} read from the cluster "
            "(writes are checked by the running relay's /readyz)",
        )
    _state(stats, report)


def _directory_checks(path: Path, max_bytes: int, report: Report) -> bool:
    """Writable and free space; False when the directory cannot be used at all."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        report.fail(
            HOP_SPOOL,
            "writable",
            f"spool.path {path}: {existing} is not a directory",
            "set spool.path to a directory",
        )
        return False
    try:
        # a file made and removed: what the relay's first write needs (os.access lies for root
        # on a read-only mount)
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".relay-doctor-"):
            pass
    except OSError as exc:
        report.fail(
            HOP_SPOOL,
            "writable",
            f"spool.path {path}: cannot write in {existing}: {exc.strerror or exc}",
            f"give the relay's user write access to {existing} (or choose another spool.path)",
        )
        return False
    note = "" if existing == path else f" ({path} does not exist yet; the relay creates it)"
    report.ok(HOP_SPOOL, "writable", f"spool.path {existing} is writable{note}")
    usage = shutil.disk_usage(existing)
    free = human_size(usage.free)
    if usage.free < _LOW_SPACE:
        report.fail(
            HOP_SPOOL,
            "free space",
            f"only {free} free on the spool's file system",
            "free disk space: the relay refuses events (503) when it cannot write",
        )
    elif usage.free < max_bytes - _used(path):
        report.warn(
            HOP_SPOOL,
            "free space",
            f"{free} free, less than what the spool may still grow by "
            f"(spool.max_bytes {format_size(max_bytes)})",
            "free disk space or lower spool.max_bytes, so the disk does not fill before the spool",
        )
    else:
        report.ok(
            HOP_SPOOL, "free space", f"{free} free (spool.max_bytes {format_size(max_bytes)})"
        )
    return True


def human_size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _used(path: Path) -> int:
    if not path.is_dir():
        return 0
    total = 0
    for entry in os.scandir(path):
        if entry.is_file(follow_symlinks=False):
            total += entry.stat(follow_symlinks=False).st_size
    return total


def _state(stats: SpoolStats, report: Report) -> None:
    problems = False
    if stats.corrupt:
        problems = True
        report.fail(
            HOP_SPOOL,
            "state",
            f"corruption found: {stats.corrupt}",
            "see `relay spool check`; a restarted relay quarantines the file",
        )
    if stats.refusing:
        problems = True
        report.fail(
            HOP_SPOOL,
            "state",
            f"the spool refuses writes: {stats.refusing}",
            "free space in the spool (deliver or purge) or raise spool.max_bytes",
        )
    if stats.set_aside:
        problems = True
        shown = ", ".join(stats.set_aside[:3]) + (" …" if len(stats.set_aside) > 3 else "")
        report.warn(
            HOP_SPOOL,
            "quarantine",
            f"{len(stats.set_aside)} store(s) set aside as unreadable: {shown}",
            "recover what can be read with `relay spool salvage FOLDER`, then remove it",
        )
    if stats.dead_letters:
        problems = True
        report.warn(
            HOP_SPOOL,
            "dead letters",
            f"{stats.dead_letters} dead letter(s)",
            "see `relay dlq list`; replay (`relay dlq replay`) or purge them",
        )
    if not problems:
        age = (
            f", the oldest {time.time() - stats.oldest_received_at:.0f} s old"
            if stats.oldest_received_at
            else ""
        )
        report.ok(
            HOP_SPOOL,
            "state",
            f"{stats.events} event(s) waiting{age}; no quarantine, no dead letters",
        )
