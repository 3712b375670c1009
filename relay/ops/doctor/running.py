"""The relay's own listener: if a relay answers on ``ingest.http.listen``, its ``/status``.

Nothing listening is a warning, not a failure: the doctor also runs before the first start.
With TLS on the listener the request is https; the certificate is not verified (the address is
this machine's own listener, and nothing secret is sent: /status needs no token). A listener that
requires client certificates cannot be asked without one: a warning says so.
"""

from __future__ import annotations

import aiohttp
import orjson

from relay.config import parse_listen
from relay.errors import one_line
from relay.ops.doctor.context import Context

__all__ = ["HOP", "check_running"]

HOP = "relay"
CHECK = "running relay"
_MAX_BODY = 1 << 20
# a relay bound to every interface is asked on loopback
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def status_url(ctx: Context) -> str:
    http = ctx.cfg.ingest.http
    host, port = parse_listen(http.listen, "ingest.http.listen")
    host = _WILDCARDS.get(host, host)
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if http.tls_cert_file else "http"
    return f"{scheme}://{shown}:{port}/status"


async def check_running(ctx: Context) -> None:
    http = ctx.cfg.ingest.http
    report = ctx.report
    url = status_url(ctx)
    if url.rsplit(":", 1)[-1].startswith("0/"):
        report.warn(HOP, CHECK, "ingest.http.listen has port 0 (any free port): cannot look for it")
        return
    if http.tls_client_ca_file:
        report.warn(
            HOP,
            CHECK,
            f"not checked: the listener requires client certificates (mutual TLS) at {url}",
            f"use `curl --cert … {url}` to read it",
        )
        return
    # https: not verified (see the module doc); http: the flag is ignored
    verify = not url.startswith("https")
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                url,
                ssl=verify,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=ctx.timeout),
            ) as resp,
        ):
            status = resp.status
            body = await resp.content.read(_MAX_BODY)
    except aiohttp.ClientConnectorError:
        report.warn(
            HOP,
            CHECK,
            f"no relay running at {url} (nothing listens there)",
            "start it (`relay run --config …`); fine before the first start",
        )
        return
    except TimeoutError:
        report.fail(
            HOP,
            CHECK,
            f"{url} gave no answer within {ctx.timeout:g} s",
            "the relay hangs, or something else holds the port: check its log",
        )
        return
    except aiohttp.ClientError as exc:
        report.fail(HOP, CHECK, f"{url}: {one_line(str(exc)) or type(exc).__name__}")
        return
    try:
        answer = orjson.loads(body) if status == 200 else None
    except orjson.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict) or "status" not in answer:
        report.fail(
            HOP,
            CHECK,
            f"{url} answered {status} without a relay's status report",
            "something else listens on ingest.http.listen",
        )
        return
    version = answer.get("version", "?")
    uptime = answer.get("uptime_seconds")
    about = f"relay {version} at {url}, up {uptime} s" if uptime is not None else url
    reasons = [one_line(str(r), 200) for r in answer.get("reasons") or []]
    if answer["status"] == "ok":
        report.ok(HOP, CHECK, f"{about}: ok")
    else:
        report.fail(
            HOP,
            CHECK,
            f"{about}: {answer['status']}: " + "; ".join(reasons[:5]),
            "see `relay status`; a relay started before a fix needs `relay reload` or a restart",
        )
