"""Commands that run something: the relay, the configuration check, a token fetch, the demo and
the development stand-ins."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from relay.cli.common import add_config, config
from relay.config import render_config
from relay.errors import UserError
from relay.signals import until_signalled


def register(sub: Any) -> None:
    def command(name: str, func: Any, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        add_config(p)
        p.set_defaults(func=func)
        return p

    command("run", _run, "run the relay until SIGTERM or SIGINT (SIGHUP reloads)")
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


def _run(args: argparse.Namespace) -> int:
    from relay.cli.reload import pid_file
    from relay.logs import setup_logging
    from relay.server import serve
    from relay.supervision import BackgroundFailure

    cfg = config(args)
    setup_logging(cfg.log.level, cfg.log.format)
    try:
        with pid_file(cfg.lifecycle.pid_file):
            asyncio.run(serve(cfg, config_path=args.config))
    except BackgroundFailure as exc:
        # already logged critically; this line is for whoever reads only the exit
        print(f"relay: stopped after an internal failure: {exc}; restart it", file=sys.stderr)
        return exc.exit_code
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from relay.config.advice import config_advice
    from relay.sources.tls import listeners_tls

    cfg = config(args)
    # the listeners' certificates are loaded as `relay run` loads them: a missing file, a key
    # that does not match or a CA file that is not PEM fails here, not at the next start
    loaded = listeners_tls(cfg)
    sys.stdout.write(render_config(cfg))
    for section, tls in loaded.items():
        if tls is not None:
            print(f"# note: {section}: {tls.describe()}; {tls.valid_until()}", file=sys.stderr)
    for advice in config_advice(cfg):
        prefix = "warning" if advice.level >= logging.WARNING else "note"
        print(f"# {prefix}: {advice.text}", file=sys.stderr)
    print(
        f"# configuration is valid{' (' + args.config + ')' if args.config else ''}",
        file=sys.stderr,
    )
    return 0


def _token(args: argparse.Namespace) -> int:
    from relay.auth.inspect import fetch_and_describe

    cfg = config(args)
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
