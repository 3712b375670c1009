"""The `relay` command. Every error a user can cause is one line on stderr, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import time
from collections.abc import Sequence

import orjson

from relay import __version__
from relay.config import Config, load_config, render_config
from relay.errors import UserError

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"relay: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay",
        description="Durable relay of eFormidling message statuses to the status service.",
    )
    parser.add_argument("--version", action="version", version=f"relay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument(
            "--config",
            metavar="FILE",
            help="TOML configuration file (defaults apply without one; "
            "RELAY_<SECTION>__<KEY> environment variables override it)",
        )
        p.set_defaults(func=func)
        return p

    command("run", _run, "run the relay until SIGTERM or SIGINT")
    command("check-config", _check_config, "validate the configuration and print it")

    spool = sub.add_parser("spool", help="inspect the spool", description="inspect the spool")
    spool_sub = spool.add_subparsers(dest="spool_command", required=True, metavar="COMMAND")
    stats = spool_sub.add_parser(
        "stats", help="depth, bytes, oldest age, dead letters, quarantined files"
    )
    stats.add_argument("--config", metavar="FILE", help="TOML configuration file")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(func=_spool_stats)
    return parser


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def _run(args: argparse.Namespace) -> int:
    from relay.logs import setup_logging
    from relay.server import serve

    cfg = _config(args)
    setup_logging(cfg.log.level, cfg.log.format)
    asyncio.run(serve(cfg))
    return 0


def _check_config(args: argparse.Namespace) -> int:
    cfg = _config(args)
    sys.stdout.write(render_config(cfg))
    print(
        f"# configuration is valid{' (' + args.config + ')' if args.config else ''}",
        file=sys.stderr,
    )
    return 0


def _spool_stats(args: argparse.Namespace) -> int:
    from relay.spool import read_stats

    cfg = _config(args)
    try:
        stats = read_stats(cfg.spool.path, cfg.spool.max_bytes)
    except sqlite3.Error as exc:
        raise UserError(
            f"cannot read the spool in {cfg.spool.path}: {exc}; "
            "a relay started on it will quarantine the file"
        ) from None
    age = time.time() - stats.oldest_received_at if stats.oldest_received_at else None
    report = {
        "path": str(cfg.spool.path),
        "depth": stats.events,
        "bytes": stats.bytes,
        "capacity_bytes": stats.capacity_bytes,
        "oldest_age_seconds": round(age, 3) if age is not None else None,
        "dead_letters": stats.dead_letters,
        "dead_letter_bytes": stats.dead_letter_bytes,
        "quarantined": stats.quarantined,
    }
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return 0
    width = max(len(k) for k in report)
    for key, value in report.items():
        if key == "quarantined":
            value = ", ".join(value) if value else "none"
        print(f"{key:<{width}}  {value}")
    return 0
