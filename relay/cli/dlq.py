"""`relay dlq`: list, replay and purge dead letters, through the configured backend's
SpoolAdmin (also while the relay runs)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import orjson

from relay.cli.common import add_config, with_admin


def register(sub: Any) -> None:
    dlq = sub.add_parser(
        "dlq",
        help="dead letters: list, replay, purge",
        description="Events the upstream refused for good, and input that was never valid.",
    )
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")
    dlq_list = dlq_sub.add_parser("list", help="list dead letters")
    dlq_list.add_argument("--json", action="store_true", help="print JSON, with the events")
    dlq_list.add_argument("--limit", type=int, default=1000, help="at most this many (1000)")
    dlq_list.set_defaults(func=_list)
    replay = dlq_sub.add_parser("replay", help="put dead letters back into the spool")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", type=int, action="append", dest="ids", help="a dead letter's id")
    which.add_argument("--all", action="store_true", help="every dead letter")
    replay.set_defaults(func=_replay)
    purge = dlq_sub.add_parser("purge", help="delete old dead letters")
    purge.add_argument(
        "--older-than", required=True, metavar="AGE", help='e.g. "30d": dead for longer than this'
    )
    purge.set_defaults(func=_purge)
    for p in (dlq_list, replay, purge):
        add_config(p, "TOML configuration file")


def _list(args: argparse.Namespace) -> int:
    records = with_admin(args, lambda admin: admin.list_dead_letters(args.limit))
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


def _replay(args: argparse.Namespace) -> int:
    from relay.sources.replay import prepare_replay

    ids = None if args.all else args.ids
    replayed, skipped = with_admin(
        args, lambda admin: admin.replay_dead_letters(ids, prepare_replay)
    )
    for dl_id, why in skipped.items():
        print(f"dead letter {dl_id} left in place: {why}", file=sys.stderr)
    print(f"replayed {len(replayed)} dead letter(s) into the spool")
    return 1 if skipped and not replayed else 0


def _purge(args: argparse.Namespace) -> int:
    from relay.config import parse_duration

    age = parse_duration(args.older_than, "--older-than")
    print(f"purged {with_admin(args, lambda admin: admin.purge_dead_letters(age))} dead letter(s)")
    return 0
