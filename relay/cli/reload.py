"""`relay reload`, and the pid file it finds the running relay by.

`relay run` writes its process id to `lifecycle.pid_file` (when set) and removes it on exit;
`relay reload` reads it and sends SIGHUP, which makes the relay re-read its configuration (see
`relay.ops.reload`). Under systemd `systemctl reload relay` does the same through ExecReload.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from relay.cli.common import add_config, config
from relay.errors import UserError


def register(sub: Any) -> None:
    help = "make the running relay re-read its configuration (sends it SIGHUP)"
    p = sub.add_parser("reload", help=help, description=help)
    add_config(p, help="the relay's configuration file, for its lifecycle.pid_file")
    p.add_argument(
        "--pid-file", metavar="PATH", help="the relay's pid file (wins over lifecycle.pid_file)"
    )
    p.set_defaults(func=_reload)


def _reload(args: argparse.Namespace) -> int:
    path = args.pid_file or config(args).lifecycle.pid_file
    if not path:
        raise UserError(
            "no pid file: give --pid-file PATH, or set lifecycle.pid_file in the configuration "
            "(and --config FILE here); under systemd use `systemctl reload relay`"
        )
    pid = read_pid(path)
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise UserError(
            f"no process {pid} is running (pid file {path} is stale): is the relay running?"
        ) from None
    except PermissionError:
        raise UserError(
            f"not allowed to signal process {pid} (from {path}): run this as the relay's user "
            "or as root"
        ) from None
    print(f"relay: asked the relay (pid {pid}) to reload; its log and /status tell the outcome")
    return 0


def read_pid(path: str) -> int:
    """The process id in `path`, checked to be a running relay; raises UserError."""
    try:
        text = Path(path).read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        raise UserError(
            f"pid file {path} does not exist: is the relay running, and does its "
            "lifecycle.pid_file name this file?"
        ) from None
    except OSError as exc:
        raise UserError(f"cannot read pid file {path}: {exc.strerror or exc}") from None
    # 1 is allowed: in a container the relay is often process 1 (the check below keeps a host's
    # init from being signalled)
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"pid file {path} does not hold a process id; remove it")
    pid = int(text)
    # a pid file left by a crash may name a process that took the number since: SIGHUP would
    # end most programs, so only a process that runs the relay is signalled
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        raise UserError(
            f"no process {pid} is running (pid file {path} is stale): is the relay running?"
        ) from None
    except OSError:
        return pid  # no /proc to look in: trust the file
    if b"relay" not in cmdline:
        raise UserError(
            f"process {pid} (from pid file {path}) is not a relay: the pid file is stale; remove it"
        )
    return pid


@contextlib.contextmanager
def pid_file(path: str) -> Iterator[None]:
    """Write this process's id to `path` (if set) while inside; removed on the way out when it
    still holds ours. Refuses to start over the pid file of another running relay."""
    if not path:
        yield
        return
    try:
        other: int | None = read_pid(path)
    except UserError:
        other = None  # none, stale or not a relay's: ours to overwrite
    if other is not None and other != os.getpid():
        raise UserError(
            f"another relay (pid {other}) runs with lifecycle.pid_file {path}: stop it, or give "
            "this one another pid file"
        )
    target = Path(path)
    try:
        partial = target.with_name(f".{target.name}.{os.getpid()}")
        partial.write_text(f"{os.getpid()}\n")
        partial.replace(target)  # a reader never sees a half-written number
    except OSError as exc:
        raise UserError(
            f"cannot write lifecycle.pid_file {path}: {exc.strerror or exc}; choose a writable "
            "place, or leave it empty"
        ) from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if target.read_text().strip() == str(os.getpid()):
                target.unlink()
