"""The status-service hop: reachable, the protocol answering, and — unless
``--no-probe-request`` — the route (or URL) and the token accepted, without sending a status.

A status sent as a test would end up in the national statistics, so the probe sends what the
service acknowledges and then throws away (shared/reference/upstream-protocol.md):

- **RSocket**: TCP (TLS, proxy tunnel) as the sink dials; SETUP with the sink's MIME types and a
  KEEPALIVE with the respond flag, whose echo proves SETUP was accepted; then one
  REQUEST_RESPONSE to ``upstream.route`` with the token, carrying the JSON array ``[]``. The
  service checks the token and the route, acknowledges, and only then reads the data: an array
  is dropped (it reaches neither the status topic nor the general log topic). Ack: route and
  token are good. ``No handler for destination …``: wrong route. ``Failed to validate the
  token``: the service does not trust this Maskinporten environment. Any other answer is shown
  as it came (bounded).
- **HTTP**: ``POST upstream.http_url`` with the token and ``{}``. The token is checked first
  (401), then the body is bound to a status and fails (400: nothing stored), so 400 proves URL
  and token; 401 the token refused; 403 the scope; 404/405 a wrong path; 3xx a redirect (a proxy
  or maintenance page).
"""

from __future__ import annotations

import re
import ssl

import aiohttp
from rsocket.extensions.helpers import authenticate_bearer, composite, route

from relay.delivery.proxy import ProxyProblem, rsocket_proxy, session_through
from relay.delivery.rsocket.errors import classify
from relay.delivery.rsocket.probe import ProbeClosed, ProbeError, Refused, RSocketProbe
from relay.errors import one_line
from relay.ops.doctor.context import Context
from relay.ops.doctor.reach import Unreachable, reach, reach_url

# answers that are about the probe's data (an array, not a status), not about route or token
_ABOUT_THE_DATA = re.compile(
    r"json|decod|deserializ|pars|array|not a status|status object|payload|invalid data",
    re.IGNORECASE,
)

__all__ = ["HOP", "check_upstream"]

HOP = "upstream"
CONNECT = "connect"
SETUP = "rsocket setup"
ROUTE = "route and token"
ENDPOINT = "endpoint and token"
PROBE_DATA = b"[]"  # acknowledged, then dropped by the service: never a status
_MAX_BODY = 8192
_NOT_CHECKED = (
    "not checked (--no-probe-request): the first delivery shows whether the service accepts "
    "the {what} and the token"
)


async def check_upstream(ctx: Context) -> None:
    if ctx.cfg.upstream.transport == "rsocket":
        await _rsocket(ctx)
    else:
        await _http(ctx)


async def _rsocket(ctx: Context) -> None:
    up = ctx.cfg.upstream
    report = ctx.report
    address = f"{up.host}:{up.port}{' (tls)' if up.tls else ''}"
    try:
        proxy = rsocket_proxy(up, ctx.environ)
        done = await reach(
            up.host,
            up.port,
            tls=up.tls,
            proxy=proxy,
            timeout=ctx.timeout,
            setting="upstream.host and upstream.port",
        )
    except ProxyProblem as exc:
        report.fail(HOP, CONNECT, str(exc), "fix the proxy setting or variable named")
    except Unreachable as exc:
        report.fail(HOP, CONNECT, f"{address}: {exc}", exc.todo)
    else:
        report.ok(HOP, CONNECT, f"{address}: {done}")
    if not report.passed(HOP, CONNECT):
        report.skip(HOP, SETUP, f"{HOP}/{CONNECT}")
        report.skip(HOP, ROUTE, f"{HOP}/{CONNECT}")
        return
    try:
        probe = await RSocketProbe.open(
            up.host, up.port, tls=up.tls, proxy=proxy, timeout=ctx.timeout
        )
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        report.fail(HOP, SETUP, f"cannot connect again: {one_line(str(exc)) or type(exc).__name__}")
        report.skip(HOP, ROUTE, f"{HOP}/{SETUP}")
        return
    try:
        await _setup_and_route(ctx, probe)
    finally:
        await probe.close()


async def _setup_and_route(ctx: Context, probe: RSocketProbe) -> None:
    up = ctx.cfg.upstream
    report = ctx.report
    try:
        rtt = await probe.setup(up.keepalive_interval, up.keepalive_max_lifetime)
    except Refused as exc:
        report.fail(
            HOP,
            SETUP,
            f"the service refused the connection: {exc}",
            "the relay's SETUP (composite metadata, JSON data) is what the service expects; "
            "check that upstream.port is the status service's RSocket port",
        )
    except ProbeClosed as exc:
        report.fail(
            HOP,
            SETUP,
            f"{exc}",
            "check that upstream.port is the RSocket port (7070) and upstream.tls matches it",
        )
    except ProbeError as exc:
        report.fail(
            HOP,
            SETUP,
            f"{exc}: the peer does not speak RSocket",
            "check that upstream.port is the RSocket port (7070) and upstream.tls matches it",
        )
    else:
        report.ok(HOP, SETUP, f"SETUP accepted, keepalive answered in {rtt * 1000:.0f} ms")
    if not report.passed(HOP, SETUP):
        report.skip(HOP, ROUTE, f"{HOP}/{SETUP}")
    elif ctx.token is None:
        report.skip(HOP, ROUTE, "maskinporten/token")
    elif not ctx.probe_request:
        report.warn(HOP, ROUTE, _NOT_CHECKED.format(what=f"route {up.route!r}"))
    else:
        await _route(ctx, probe)


async def _route(ctx: Context, probe: RSocketProbe) -> None:
    up = ctx.cfg.upstream
    report = ctx.report
    assert ctx.token is not None
    metadata = composite(route(up.route), authenticate_bearer(ctx.token.access_token))
    try:
        await probe.request(PROBE_DATA, metadata)
    except Refused as exc:
        if exc.stream == 0:
            report.fail(HOP, ROUTE, f"the service answered {exc}", "see the service's answer")
            return
        reason = classify(RuntimeError(exc.text)).reason if exc.code == "APPLICATION_ERROR" else ""
        if reason == "route":
            report.fail(
                HOP,
                ROUTE,
                f"wrong route: the service says {exc.text!r}",
                f"set upstream.route (the service's route is log-fire, not {up.route!r})",
            )
        elif reason == "token":
            report.fail(
                HOP, ROUTE, f"the service refused the token: {exc.text}", _token_advice(exc.text)
            )
        elif exc.code == "REJECTED" or _ABOUT_THE_DATA.search(exc.text):
            # past routing and the token check: a service that refuses the array itself (or is
            # busy), rather than acknowledging and dropping it, has still taken route and token
            report.warn(
                HOP,
                ROUTE,
                f"route {up.route!r} and the token were not refused, but the probe (an empty "
                f"JSON array, no status) was answered {exc}",
                "nothing, unless delivery fails too: then see the service's answer",
            )
        else:
            report.fail(
                HOP,
                ROUTE,
                f"the service refused the probe request: {exc}",
                f"check upstream.route ({up.route!r}; the service's is log-fire) and the "
                "[maskinporten] settings (the service may not take this token)",
            )
        return
    except ProbeError as exc:
        report.fail(HOP, ROUTE, f"no answer to the probe request: {exc}")
        return
    report.ok(
        HOP,
        ROUTE,
        f"route {up.route!r} and the token accepted (the probe was an empty JSON array, which "
        "the service acknowledges and drops: no status was sent)",
    )


def _token_advice(text: str) -> str:
    lowered = text.lower()
    if "failed to validate" in lowered:
        return (
            "the service does not trust tokens from this Maskinporten environment: use the "
            "one it trusts (maskinporten.token_url and audience; qa and test belong together)"
        )
    if "expired" in lowered:
        return "set this machine's clock right (NTP); the service allows 60 s of skew"
    if "access denied" in lowered:
        return "check maskinporten.scope: the service does not accept this token's grants"
    return "check the [maskinporten] settings: the service cannot use this token"


async def _http(ctx: Context) -> None:
    up = ctx.cfg.upstream
    report = ctx.report
    proxy = None
    try:
        done, proxy = await reach_url(
            up.http_url,
            setting="upstream.http_url",
            section="upstream",
            proxy=up.proxy,
            password_file=up.proxy_password_file,
            environ=ctx.environ,
            timeout=ctx.timeout,
        )
    except ProxyProblem as exc:
        report.fail(HOP, CONNECT, str(exc), "fix the proxy setting or variable named")
    except Unreachable as exc:
        report.fail(HOP, CONNECT, f"{up.http_url}: {exc}", exc.todo)
    else:
        report.ok(HOP, CONNECT, f"{up.http_url}: {done}")
    if not report.passed(HOP, CONNECT):
        report.skip(HOP, ENDPOINT, f"{HOP}/{CONNECT}")
    elif ctx.token is None:
        report.skip(HOP, ENDPOINT, "maskinporten/token")
    elif not ctx.probe_request:
        report.warn(HOP, ENDPOINT, _NOT_CHECKED.format(what="URL"))
    else:
        async with session_through(proxy) as session:
            await _post_probe(ctx, session)


async def _post_probe(ctx: Context, session: aiohttp.ClientSession) -> None:
    up = ctx.cfg.upstream
    report = ctx.report
    assert ctx.token is not None
    try:
        async with session.post(
            up.http_url,
            data=b"{}",
            headers={
                "Authorization": f"Bearer {ctx.token.access_token}",
                "Content-Type": "application/json",
            },
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=ctx.timeout),
        ) as resp:
            status = resp.status
            challenge = resp.headers.get("WWW-Authenticate", "")
            location = resp.headers.get("Location", "")
            body = (await resp.content.read(_MAX_BODY)).decode("utf-8", "replace")
    except TimeoutError:
        report.fail(HOP, ENDPOINT, f"no answer from {up.http_url} within {ctx.timeout:g} s")
        return
    except (aiohttp.ClientError, OSError) as exc:
        report.fail(HOP, ENDPOINT, f"{up.http_url}: {one_line(str(exc)) or type(exc).__name__}")
        return
    answer = f"POST {up.http_url} with an empty JSON object answered {status}"
    if status in (400, 422):
        report.ok(
            HOP,
            ENDPOINT,
            f"{answer}: the URL and the token are accepted (the object cannot be bound to a "
            "status, so nothing was stored)",
        )
    elif status == 401:
        why = _description(challenge)
        report.fail(
            HOP,
            ENDPOINT,
            f"{answer}: the service refused the token{': ' + why if why else ''}",
            _token_advice(why or "failed to validate"),
        )
    elif status == 403:
        report.fail(HOP, ENDPOINT, f"{answer} (Forbidden)", "check maskinporten.scope")
    elif status in (404, 405):
        report.fail(
            HOP,
            ENDPOINT,
            f"{answer}: wrong path",
            "set upstream.http_url to the service's status endpoint (…/logging/api/status)",
        )
    elif status == 407:
        report.fail(
            HOP,
            ENDPOINT,
            f"{answer}: the proxy wants a user and password",
            "check upstream.proxy and upstream.proxy_password_file",
        )
    elif 300 <= status < 400:
        report.fail(
            HOP,
            ENDPOINT,
            f"{answer}: a redirect to {one_line(location, 200) or '?'}",
            "fix upstream.http_url, or the proxy in the way",
        )
    elif 200 <= status < 300:
        report.warn(
            HOP,
            ENDPOINT,
            f"{answer}: accepted an object that is no status; the real service refuses it (400)",
            "check that upstream.http_url is the status service",
        )
    else:
        shown = one_line(body, 200)
        report.fail(HOP, ENDPOINT, f"{answer}{': ' + shown if shown else ''}", "see the answer")


def _description(challenge: str) -> str:
    """error_description of a Bearer challenge (RFC 6750), bounded; '' without one."""
    marker = 'error_description="'
    start = challenge.find(marker)
    if start < 0:
        return ""
    rest = challenge[start + len(marker) :]
    return one_line(rest.split('"', 1)[0], 200)
