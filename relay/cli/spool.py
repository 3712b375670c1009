"""`relay spool`: stats, check and salvage, through the configured backend's SpoolAdmin; and
migrate, from another spool into the configured one, through the Spool protocol."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from relay.cli.common import add_config, config, spool_place, with_admin
from relay.config import spool_options
from relay.errors import UserError
from relay.spool import SpoolAdmin, SpoolError, SpoolStats, open_spool

# the source spool is only read and emptied: no limit of its own applies
SOURCE_MAX_BYTES = 1 << 50
PROGRESS_EVERY = 10_000  # events between two progress lines


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
    migrate = spool_sub.add_parser(
        "migrate",
        help="move the waiting events of another spool into the configured one",
        description="Move the events waiting in the spool in DIR (e.g. a relay's SQLite spool, "
        "that relay stopped) into the spool the configuration names (e.g. jetstream). Dead "
        "letters stay in DIR. Interrupted, it moves the rest when run again.",
    )
    migrate.add_argument(
        "--from",
        dest="from_backend",
        required=True,
        choices=["sqlite"],
        metavar="BACKEND",
        help="the backend of the spool to empty: sqlite",
    )
    migrate.add_argument(
        "--from-path", required=True, metavar="DIR", help="its spool.path (the relay stopped)"
    )
    add_config(migrate, "TOML configuration file of the relay(s) that take the events over")
    migrate.set_defaults(func=_migrate)


def _stats(args: argparse.Namespace) -> int:
    cfg = config(args)

    async def read(admin: SpoolAdmin) -> tuple[SpoolStats, dict[str, dict[str, int]]]:
        return await admin.stats(), await admin.per_source()

    stats, sources = with_admin(args, read)
    age = time.time() - stats.oldest_received_at if stats.oldest_received_at else None
    report = {
        "backend": cfg.spool.backend,
        "path": spool_place(cfg),
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
        print(f"spool {spool_place(cfg)}: {problem}", file=sys.stderr)
    if not problems:
        print(f"spool {spool_place(cfg)} is sound")
    return 1 if problems else 0


def _salvage(args: argparse.Namespace) -> int:
    cfg = config(args)
    report = with_admin(args, lambda admin: admin.salvage(args.folder))
    for table, lo, hi in report.unreadable:
        print(f"{table}: ids {lo}-{hi} could not be read (or did not exist)", file=sys.stderr)
    print(
        f"salvaged {report.events} event(s) and {report.dead_letters} dead letter(s) from "
        f"{args.folder} into {spool_place(cfg)}"
    )
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from relay.spool.migrate import migrate

    cfg = config(args)
    source_path = Path(args.from_path)
    if not source_path.is_dir():
        raise UserError(
            f"no spool at {source_path} (--from-path): give the spool.path of the relay to empty"
        )
    target_path = Path(cfg.spool.path)
    if args.from_backend == cfg.spool.backend and source_path.resolve() == target_path.resolve():
        raise UserError(
            f"{source_path} is the configured spool itself: a spool cannot be migrated into "
            "itself; give the configuration of the relay(s) that take the events over (--config)"
        )

    def progress(moved: int) -> None:
        if moved // PROGRESS_EVERY != (moved - 1) // PROGRESS_EVERY:
            print(f"moved {moved} event(s) so far", file=sys.stderr)

    told: list[int] = []

    def waiting(left: int) -> None:
        if not told:  # once: the wait may take until the longest backoff runs out
            print(
                f"{left} event(s) wait for their retry time in {source_path}; waiting for "
                "them (Ctrl-C stops; running this again continues)",
                file=sys.stderr,
            )
        told.append(left)

    async def run() -> int:
        source = await open_spool(
            args.from_backend, str(source_path), max_bytes=SOURCE_MAX_BYTES, dedup_window=0
        )
        try:
            target = await open_spool(
                cfg.spool.backend,
                str(target_path),
                max_bytes=cfg.spool.max_bytes,
                dedup_window=cfg.spool.dedup_window,
                options=spool_options(cfg),
            )
            try:
                return await migrate(source, target, progress=progress, waiting=waiting)
            finally:
                await target.close()
        finally:
            await source.close()

    try:
        moved = asyncio.run(run())
    except SpoolError as exc:
        raise UserError(str(exc)) from None
    print(
        f"moved {moved} event(s) from {args.from_backend} spool {source_path} to "
        f"{cfg.spool.backend} (dead letters stay in {source_path}: relay dlq with that spool)"
    )
    return 0
