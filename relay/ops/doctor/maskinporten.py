"""The Maskinporten hop: the token endpoint reachable (DNS, TCP, TLS, proxy), one token got with
the configured credentials (no retries), and what the token says: scope, consumer organisation,
lifetime, issuer and the environment it came from. The token itself is never shown."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import jwt

from relay.auth.tokens import OAuthError, TokenEndpointError, request_token
from relay.config.advice import is_loopback_host
from relay.delivery.proxy import ProxyProblem, proxied_session
from relay.ops.doctor.context import Context
from relay.ops.doctor.reach import Unreachable, reach_url

__all__ = ["HOP", "check_maskinporten", "environment_of", "upstream_environment"]

HOP = "maskinporten"
REACHABLE = "reachable"
TOKEN = "token"
CLAIMS = "token claims"

_ENVIRONMENTS = {
    "maskinporten.no": "prod",
    "test.maskinporten.no": "test",
    "ver2.maskinporten.no": "test",
}
_UPSTREAM_ENVIRONMENTS = {
    "meldingsutveksling.difi.no": "prod",
    "stream.meldingsutveksling.difi.no": "prod",
    "qa-meldingsutveksling.difi.no": "test",
    "test-stream.meldingsutveksling.difi.no": "test",
}


def environment_of(url: str) -> str:
    """Which Maskinporten an issuer or endpoint URL belongs to: prod, test, a local stand-in."""
    host = (urlsplit(url).hostname or "").lower()
    if host in _ENVIRONMENTS:
        return _ENVIRONMENTS[host]
    if is_loopback_host(host):
        return "local stand-in"
    return f"unknown ({host or url})"


def upstream_environment(host: str) -> str | None:
    """prod or test for the known status-service hosts, else None."""
    return _UPSTREAM_ENVIRONMENTS.get(host.lower().rstrip("."))


async def check_maskinporten(ctx: Context) -> None:
    mp = ctx.cfg.maskinporten
    report = ctx.report
    try:
        done, _ = await reach_url(
            mp.token_url,
            setting="maskinporten.token_url",
            section="maskinporten",
            proxy=mp.proxy,
            password_file=mp.proxy_password_file,
            environ=ctx.environ,
            timeout=ctx.timeout,
        )
    except ProxyProblem as exc:
        report.fail(HOP, REACHABLE, str(exc), "fix the proxy setting or variable named")
    except Unreachable as exc:
        report.fail(HOP, REACHABLE, f"{mp.token_url}: {exc}", exc.todo)
    else:
        report.ok(HOP, REACHABLE, f"{mp.token_url}: {done}")

    if ctx.creds is None:
        report.skip(HOP, TOKEN, "credentials")
    elif not report.passed(HOP, REACHABLE):
        report.skip(HOP, TOKEN, f"{HOP}/{REACHABLE}")
    else:
        await _token(ctx)
    if ctx.token is None:
        report.skip(HOP, CLAIMS, f"{HOP}/{TOKEN}")
    else:
        _claims(ctx)


async def _token(ctx: Context) -> None:
    mp = ctx.cfg.maskinporten
    report = ctx.report
    assert ctx.creds is not None
    sent_at = time.time()
    try:
        # the session the relay's token requests use: through maskinporten.proxy or the
        # environment's proxy, chosen the same way as above
        async with proxied_session(
            mp.token_url, "maskinporten", mp.proxy, mp.proxy_password_file
        ) as session:
            ctx.token = await request_token(
                session, mp, ctx.creds, timeout=ctx.timeout, now=sent_at
            )
        ctx.report.hide(ctx.token.access_token, "<access token>")
    except OAuthError as exc:
        report.fail(
            HOP,
            TOKEN,
            f"Maskinporten refused the grant for {mp.client_id}: {exc}",
            _oauth_advice(exc),
        )
        return
    except TokenEndpointError as exc:
        report.fail(
            HOP,
            TOKEN,
            str(exc),
            "check maskinporten.token_url (the environment's /token) and Maskinporten's status",
        )
        return
    except ProxyProblem as exc:
        report.fail(HOP, TOKEN, str(exc), "fix the proxy setting or variable named")
        return
    report.ok(
        HOP,
        TOKEN,
        f"got an access token for {mp.client_id} (scope {ctx.token.scope}, "
        f"expires in {ctx.token.expires_in:.0f} s)",
    )


def _oauth_advice(exc: OAuthError) -> str:
    text = f"{exc.error} {exc.description}".lower()
    if "aud" in text:
        return (
            "set maskinporten.audience to the environment's issuer exactly, trailing slash "
            "included (test: https://test.maskinporten.no/, prod: https://maskinporten.no/)"
        )
    if "expired key" in text or ("key" in text and "expired" in text and "jwt" not in text):
        return (
            "the key (or its certificate) registered for the client has expired: renew it and "
            "register the new one for maskinporten.client_id"
        )
    if "iat" in text or "clock" in text or ("expired" in text and "certificate" not in text):
        return "set this machine's clock right (NTP): Maskinporten allows 10 s"
    if exc.error == "invalid_scope":
        return "ask for the scopes the client was granted (maskinporten.scope), or have it granted"
    if exc.error == "invalid_client":
        return (
            "check maskinporten.client_id and that the certificate (or kid) is the one "
            "registered for that client, of the client's organisation"
        )
    if "certificate" in text:
        return "use a valid business certificate from a CA Maskinporten trusts"
    return "see Maskinporten's answer; check the [maskinporten] settings"


def _claims(ctx: Context) -> None:
    mp = ctx.cfg.maskinporten
    report = ctx.report
    token = ctx.token
    assert token is not None
    try:
        # for display only: the status service, not we, verifies the signature
        ctx.claims = jwt.decode(token.access_token, options={"verify_signature": False})
    except jwt.PyJWTError:
        ctx.claims = {}
    claims = ctx.claims
    scope = str(claims.get("scope") or token.scope)
    consumer = claims.get("consumer")
    org = consumer.get("ID") if isinstance(consumer, dict) else None
    issuer = str(claims.get("iss") or "")
    environment = environment_of(issuer or mp.token_url)
    lifetime = token.expires_in
    parts = [
        f"scope {scope}",
        f"consumer {org or '-'}",
        f"lifetime {lifetime:.0f} s",
        f"issuer {issuer or '-'} ({environment})",
    ]
    detail = ", ".join(parts)
    problems = []
    wanted = set(mp.scope.split())
    missing = sorted(wanted - set(scope.split()))
    if missing:
        problems.append(f"the token lacks scope {' '.join(missing)}")
    upstream = ctx.cfg.upstream
    host = (
        upstream.host if upstream.transport == "rsocket" else urlsplit(upstream.http_url).hostname
    )
    service_env = upstream_environment(host or "")
    if service_env is not None and environment in ("prod", "test") and service_env != environment:
        problems.append(
            f"the token is from Maskinporten {environment} but the status service {host} is "
            f"{service_env}: it will refuse the token"
        )
    if lifetime < 60:
        problems.append(f"a short lifetime ({lifetime:.0f} s): tokens are renewed often")
    if problems:
        report.warn(
            HOP,
            CLAIMS,
            f"{detail}; " + "; ".join(problems),
            "point maskinporten.token_url and audience at the environment of the status "
            "service, with the scopes it needs",
        )
    else:
        report.ok(HOP, CLAIMS, detail)
