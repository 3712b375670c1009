"""The `relay` command. Every error a user can cause is one line on stderr, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from relay import __version__
from relay.config import Config, load_config, render_config
from relay.errors import UserError
from relay.signals import until_signalled

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
    token = command(
        "token", _token, "fetch a Maskinporten token with the configured credentials and show it"
    )
    token.add_argument("--raw", action="store_true", help="also print the access token itself")
    demo = sub.add_parser(
        "demo",
        help="run the stand-ins and a relay wired to them (what `make run` runs)",
        description="Start Maskinporten and status-service stand-ins and a relay wired to them.",
    )
    demo.add_argument("--listen", default="127.0.0.1:8080", help="the relay's HTTP address")
    demo.set_defaults(func=_demo)
    dev = sub.add_parser(
        "dev-upstream",
        help="run the Maskinporten and status-service stand-ins",
        description="Stand-ins for development and tests; writes DATA/relay.toml for a relay.",
    )
    dev.add_argument("--data", default="./dev-upstream", help="folder for PKI and received events")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--rsocket-port", type=int, default=7070)
    dev.add_argument("--http-port", type=int, default=8090)
    dev.add_argument("--maskinporten-port", type=int, default=8091)
    dev.add_argument("--token-lifetime", type=float, default=120.0, help="seconds (120)")
    dev.add_argument(
        "--ack-only",
        action="store_true",
        help="check and answer requests but only count them (for benchmarks): nothing stored",
    )
    dev.add_argument(
        "--accept-arrays",
        action="store_true",
        help="store each element of a JSON array (the real service drops arrays); the written "
        "relay.toml then sets upstream.accepts_arrays = true",
    )
    dev.set_defaults(func=_dev_upstream)

    spool = sub.add_parser("spool", help="inspect the spool", description="inspect the spool")
    spool_sub = spool.add_subparsers(dest="spool_command", required=True, metavar="COMMAND")
    stats = spool_sub.add_parser(
        "stats", help="depth, bytes, oldest age, dead letters, quarantined files"
    )
    stats.add_argument("--config", metavar="FILE", help="TOML configuration file")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(func=_spool_stats)
    check = spool_sub.add_parser(
        "check", help="integrity check of the spool file (exit 0 sound, 1 problems found)"
    )
    check.add_argument("--config", metavar="FILE", help="TOML configuration file")
    check.set_defaults(func=_spool_check)
    salvage = spool_sub.add_parser(
        "salvage",
        help="queue again what can be read of a quarantined spool (also while the relay runs)",
    )
    salvage.add_argument(
        "folder", help="the quarantine folder, as /status shows it (quarantine/<time>) or a path"
    )
    salvage.add_argument("--config", metavar="FILE", help="TOML configuration file")
    salvage.set_defaults(func=_spool_salvage)
    status = sub.add_parser(
        "status", help="show a running relay's /status readably", description="Show /status."
    )
    status.add_argument("--url", default="http://127.0.0.1:8080", help="the relay's HTTP address")
    status.add_argument("--json", action="store_true", help="print the JSON as it is")
    status.set_defaults(func=_status)

    dlq = sub.add_parser(
        "dlq",
        help="dead letters: list, replay, purge",
        description="Events the upstream refused for good, and input that was never valid.",
    )
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")
    dlq_list = dlq_sub.add_parser("list", help="list dead letters")
    dlq_list.add_argument("--json", action="store_true", help="print JSON, with the events")
    dlq_list.add_argument("--limit", type=int, default=1000, help="at most this many (1000)")
    dlq_list.set_defaults(func=_dlq_list)
    replay = dlq_sub.add_parser("replay", help="put dead letters back into the spool")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", type=int, action="append", dest="ids", help="a dead letter's id")
    which.add_argument("--all", action="store_true", help="every dead letter")
    replay.set_defaults(func=_dlq_replay)
    purge = dlq_sub.add_parser("purge", help="delete old dead letters")
    purge.add_argument(
        "--older-than", required=True, metavar="AGE", help='e.g. "30d": dead for longer than this'
    )
    purge.set_defaults(func=_dlq_purge)
    for p in (dlq_list, replay, purge):
        p.add_argument("--config", metavar="FILE", help="TOML configuration file")
    return parser


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def _run(args: argparse.Namespace) -> int:
    from relay.logs import setup_logging
    from relay.server import serve
    from relay.supervision import BackgroundFailure

    cfg = _config(args)
    setup_logging(cfg.log.level, cfg.log.format)
    try:
        asyncio.run(serve(cfg))
    except BackgroundFailure as exc:
        # already logged critically; this line is for whoever reads only the exit
        print(f"relay: stopped after an internal failure: {exc}; restart it", file=sys.stderr)
        return exc.exit_code
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from relay.config.advice import config_advice

    cfg = _config(args)
    sys.stdout.write(render_config(cfg))
    for advice in config_advice(cfg):
        prefix = "warning" if advice.level >= logging.WARNING else "note"
        print(f"# {prefix}: {advice.text}", file=sys.stderr)
    print(
        f"# configuration is valid{' (' + args.config + ')' if args.config else ''}",
        file=sys.stderr,
    )
    return 0


def _spool_stats(args: argparse.Namespace) -> int:
    from relay.spool import per_source, read_stats

    cfg = _config(args)
    try:
        stats = read_stats(cfg.spool.path, cfg.spool.max_bytes)
        sources = per_source(cfg.spool.path)
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
        "invalid_bytes": stats.invalid_bytes,
        "dedup_log_bytes": stats.dedup_log_bytes,
        "quarantined": stats.quarantined,
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


def _spool_check(args: argparse.Namespace) -> int:
    from relay.spool import check_spool

    cfg = _config(args)
    problems = check_spool(cfg.spool.path)
    for problem in problems:
        print(f"spool {cfg.spool.path}: {problem}", file=sys.stderr)
    if not problems:
        print(f"spool {cfg.spool.path} is sound")
    return 1 if problems else 0


def _spool_salvage(args: argparse.Namespace) -> int:
    from relay.spool.sqlite.salvage import SalvageError, salvage

    cfg = _config(args)
    spool_dir = Path(cfg.spool.path)
    folder = Path(args.folder)
    if not folder.is_absolute() and not folder.exists():
        folder = spool_dir / folder
    try:
        report = salvage(folder, spool_dir)
    except SalvageError as exc:
        raise UserError(f"cannot salvage: {exc}") from None
    except sqlite3.Error as exc:
        raise UserError(f"cannot salvage into the spool in {spool_dir}: {exc}") from None
    for table, lo, hi in report.unreadable:
        print(f"{table}: ids {lo}-{hi} could not be read (or did not exist)", file=sys.stderr)
    print(
        f"salvaged {report.events} event(s) and {report.dead_letters} dead letter(s) from "
        f"{folder} into {spool_dir}"
    )
    return 0


def _status(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.request

    url = args.url.rstrip("/") + "/status"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            body = r.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"cannot read {url}: {reason}; is the relay running there?") from None
    try:
        report = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UserError(f"{url} did not answer JSON; is that a relay?") from None
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print(_format_status(report))
    return 0 if report.get("status") == "ok" else 1


def _format_status(report: dict) -> str:
    lines = [f"status: {report.get('status', '?').upper()}"]
    lines += [f"  - {reason}" for reason in report.get("reasons", [])]
    for section in ("spool", "upstream", "delivery", "token"):
        values = report.get(section)
        if not values:
            continue
        lines.append(f"{section}:")
        for key, value in values.items():
            if isinstance(value, dict):
                value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
            elif isinstance(value, list):
                value = ", ".join(map(str, value)) or "-"
            lines.append(f"  {key.replace('_', ' '):<26} {'-' if value is None else value}")
    return "\n".join(lines)


def _dlq_call(args: argparse.Namespace, func, *rest):
    cfg = _config(args)
    try:
        return func(cfg.spool.path, *rest)
    except FileNotFoundError as exc:
        raise UserError(f"{exc}; check spool.path") from None
    except sqlite3.Error as exc:
        raise UserError(f"cannot use the spool in {cfg.spool.path}: {exc}") from None


def _dlq_list(args: argparse.Namespace) -> int:
    from relay.spool import list_dead_letters

    records = _dlq_call(args, list_dead_letters, args.limit)
    if args.json:
        out = []
        for r in records:
            item = {k: getattr(r, k) for k in r.__slots__ if k != "body"}
            item["event"] = r.body.decode("utf-8", "replace")
            out.append(item)
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return 0
    if not records:
        print("no dead letters")
        return 0
    print(f"{'id':>6}  {'dead since':<20}  {'reason':<9} {'source':<8} {'tries':>5}  last error")
    for r in records:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.dead_at))
        error = (r.last_error or "")[:80]
        print(f"{r.id:>6}  {when:<20}  {r.reason:<9} {r.source:<8} {r.attempts:>5}  {error}")
    return 0


def _dlq_replay(args: argparse.Namespace) -> int:
    from relay import event
    from relay.sources.syslog_header import decode_event
    from relay.spool import replay_dead_letters

    def prepare(body: bytes) -> bytes:
        # raw input that never was a valid event would only be refused again upstream; a
        # syslog frame keeps its header, so the event is looked for inside it
        try:
            value = event.decode(body)
        except event.EventError:
            value = decode_event(body)
        return event.encode(event.normalise(value))

    replayed, skipped = _dlq_call(
        args, replay_dead_letters, None if args.all else args.ids, prepare
    )
    for dl_id, why in skipped.items():
        print(f"dead letter {dl_id} left in place: {why}", file=sys.stderr)
    print(f"replayed {len(replayed)} dead letter(s) into the spool")
    return 1 if skipped and not replayed else 0


def _dlq_purge(args: argparse.Namespace) -> int:
    from relay.config import parse_duration
    from relay.spool import purge_dead_letters

    age = parse_duration(args.older_than, "--older-than")
    print(f"purged {_dlq_call(args, purge_dead_letters, age)} dead letter(s)")
    return 0


def _token(args: argparse.Namespace) -> int:
    from relay.auth.inspect import fetch_and_describe

    cfg = _config(args)
    print(asyncio.run(fetch_and_describe(cfg.maskinporten, raw=args.raw)))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from relay.dev.demo import run_demo
    from relay.logs import setup_logging

    setup_logging("info", "text")
    try:
        asyncio.run(run_demo(args.listen))
    except OSError as exc:
        raise UserError(f"cannot start the demo: {exc.strerror or exc}") from None
    return 0


def _dev_upstream(args: argparse.Namespace) -> int:
    from relay.dev.upstream import DevUpstream
    from relay.logs import setup_logging

    setup_logging("info", "text")

    async def run() -> None:
        upstream = DevUpstream(
            Path(args.data),
            host=args.host,
            token_lifetime=args.token_lifetime,
            ack_only=args.ack_only,
            accept_arrays=args.accept_arrays,
        )
        try:
            a = await upstream.start(
                rsocket_port=args.rsocket_port,
                http_port=args.http_port,
                maskinporten_port=args.maskinporten_port,
            )
        except OSError as exc:
            await upstream.close()
            raise UserError(f"cannot listen: {exc.strerror or exc}; choose other ports") from None
        print(
            f"READY rsocket={a.host}:{a.rsocket_port} http={a.status_url} "
            f"maskinporten={a.maskinporten_url} config={Path(args.data) / 'relay.toml'}",
            flush=True,
        )
        await until_signalled()
        await upstream.close()

    asyncio.run(run())
    return 0
