"""`relay doctor --config F [--json]`: check each hop, print a checklist, exit 0 or 1."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson

from relay.cli.common import add_config

EXIT_FAILED = 1


def register(sub: Any) -> None:
    help = "check configuration, spool, credentials, Maskinporten, the status service and the relay"
    p = sub.add_parser(
        "doctor",
        help=help,
        description=help + ", in that order; exit 0 when nothing failed (warnings allowed), "
        "1 otherwise. Nothing is delivered: the status service gets one request it "
        "acknowledges and drops (an empty JSON array over RSocket, an empty object over HTTP), "
        "unless --no-probe-request.",
    )
    add_config(p)
    p.add_argument("--json", action="store_true", help="print a JSON list of checks")
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="limit for each network step (5)",
    )
    p.add_argument(
        "--no-probe-request",
        action="store_true",
        help="send the status service no request: route (or URL) and token stay unchecked",
    )
    p.set_defaults(func=_doctor)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 300:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 300 seconds")
    return value


def _doctor(args: argparse.Namespace) -> int:
    from relay.ops.doctor import run_doctor

    report = asyncio.run(
        run_doctor(args.config, timeout=args.timeout, probe_request=not args.no_probe_request)
    )
    if args.json:
        sys.stdout.write(orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        title = f"relay doctor: {args.config or '(no configuration file)'}"
        print(report.render(title))
    return report.exit_code
