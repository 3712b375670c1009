"""`relay spool`: stats, check and salvage, through the configured backend's SpoolAdmin."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import orjson

from relay.cli.common import add_config, config, with_admin
from relay.spool import SpoolAdmin, SpoolStats


def register(sub: Any) -> None:
    spool = sub.add_parser("spool", help="inspect the spool", description="inspect the spool")
    spool_sub = spool.add_subparsers(dest="spool_command", required=True, metavar="COMMAND")
    stats = spool_sub.add_parser(
        "stats", help="depth, bytes, oldest age, dead letters, quarantined files"
    )
    add_config(stats, "TOML configuration file")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(func=_stats)
    check = spool_sub.add_parser(
        "check", help="integrity check of the spool file (exit 0 sound, 1 problems found)"
    )
    add_config(check, "TOML configuration file")
    check.set_defaults(func=_check)
    salvage = spool_sub.add_parser(
        "salvage",
        help="queue again what can be read of a quarantined spool (also while the relay runs)",
    )
    salvage.add_argument(
        "folder", help="the quarantine folder, as /status shows it (quarantine/<time>) or a path"
    )
    add_config(salvage, "TOML configuration file")
    salvage.set_defaults(func=_salvage)


def _stats(args: argparse.Namespace) -> int:
    cfg = config(args)

    async def read(admin: SpoolAdmin) -> tuple[SpoolStats, dict[str, dict[str, int]]]:
        return await admin.stats(), await admin.per_source()

    stats, sources = with_admin(args, read)
    age = time.time() - stats.oldest_received_at if stats.oldest_received_at else None
    report = {
        "path": str(cfg.spool.path),
        "depth": stats.events,
        "bytes": stats.bytes,
        "capacity_bytes": stats.capacity_bytes,
        "oldest_age_seconds": round(age, 3) if age is not None else None,
        "dead_letters": stats.dead_letters,
        "dead_letter_bytes": stats.dead_letter_bytes,
        "invalid_bytes": stats.invalid_bytes,
        "dedup_log_bytes": stats.dedup_log_bytes,
        "quarantined": stats.set_aside,
        "sources": sources,
    }
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return 0
    width = max(len(k) for k in report)
    for key, value in report.items():
        if key == "quarantined":
            value = ", ".join(value) if value else "none"
        if key == "sources":
            value = "; ".join(
                f"{name}: {n['events']} waiting, {n['dead_letters']} dead"
                for name, n in sorted(value.items())
            )
        print(f"{key:<{width}}  {value or '-'}")
    return 0


def _check(args: argparse.Namespace) -> int:
    cfg = config(args)
    problems = with_admin(args, lambda admin: admin.check())
    for problem in problems:
        print(f"spool {cfg.spool.path}: {problem}", file=sys.stderr)
    if not problems:
        print(f"spool {cfg.spool.path} is sound")
    return 1 if problems else 0


def _salvage(args: argparse.Namespace) -> int:
    cfg = config(args)
    report = with_admin(args, lambda admin: admin.salvage(args.folder))
    for table, lo, hi in report.unreadable:
        print(f"{table}: ids {lo}-{hi} could not be read (or did not exist)", file=sys.stderr)
    print(
        f"salvaged {report.events} event(s) and {report.dead_letters} dead letter(s) from "
        f"{args.folder} into {cfg.spool.path}"
    )
    return 0
