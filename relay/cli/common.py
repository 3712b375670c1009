"""What the commands share: the configuration option, and the spool's admin side."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from relay.config import Config, load_config, spool_options
from relay.errors import UserError
from relay.spool import SpoolAdmin, SpoolError, open_admin

T = TypeVar("T")

CONFIG_HELP = (
    "TOML configuration file (defaults apply without one; "
    "RELAY_<SECTION>__<KEY> environment variables override it)"
)


def add_config(parser: argparse.ArgumentParser, help: str = CONFIG_HELP) -> None:
    parser.add_argument("--config", metavar="FILE", help=help)


def config(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def spool_place(cfg: Config) -> str:
    """Where the configured spool is, as commands name it."""
    if cfg.spool.backend == "jetstream":
        return f"jetstream stream {cfg.spool.jetstream.stream}"
    return str(cfg.spool.path)


def with_admin(args: argparse.Namespace, use: Callable[[SpoolAdmin], Awaitable[T]]) -> T:
    """Run `use` with the admin side of the configured spool; its errors become one line."""
    cfg = config(args)

    async def run() -> T:
        admin = open_admin(
            cfg.spool.backend,
            cfg.spool.path,
            max_bytes=cfg.spool.max_bytes,
            options=spool_options(cfg),
        )
        return await use(admin)

    try:
        return asyncio.run(run())
    except SpoolError as exc:
        raise UserError(str(exc)) from None
