"""The `relay` command. Every error a user can cause is one line on stderr, never a traceback.

The commands live in modules: `serve.py` (run, check-config, token, demo, dev-upstream),
`spool.py` (`relay spool`), `dlq.py` (`relay dlq`), `status.py` (`relay status`), `reload.py`
(`relay reload`, and the pid file `relay run` writes), `doctor.py` (`relay doctor`: every hop
checked, see `relay.ops.doctor`). The spool commands speak to
`relay.spool.api.SpoolAdmin` only (through `common.py`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from relay import __version__
from relay.cli import dlq, doctor, reload, serve, spool, status
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
    serve.register(sub)
    reload.register(sub)
    spool.register(sub)
    status.register(sub)
    dlq.register(sub)
    doctor.register(sub)
    return parser
