"""`relay token`: fetch one access token and show what it grants, for checking a setup."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping

import jwt
import orjson

from relay.auth.credentials import Credentials, load_credentials
from relay.auth.tokens import OAuthError, TokenEndpointError, request_token
from relay.config.model import MaskinportenConfig
from relay.delivery.proxy import maskinporten_session
from relay.errors import UserError

__all__ = ["fetch_and_describe"]


async def fetch_and_describe(
    cfg: MaskinportenConfig, *, raw: bool = False, environ: Mapping[str, str] | None = None
) -> str:
    """Fetch one token (no retries) and describe it; the token itself only when `raw`."""
    creds = load_credentials(cfg, environ)
    sent_at = time.time()
    try:
        async with maskinporten_session(cfg) as session:
            resp = await request_token(session, cfg, creds, now=sent_at)
    except OAuthError as e:
        raise UserError(
            f"token endpoint {cfg.token_url} refused the grant for {cfg.client_id}: {e}"
        ) from None
    except TokenEndpointError as e:
        raise UserError(str(e)) from None

    lines = [
        f"access token for {cfg.client_id} from {cfg.token_url}",
        f"scope: {resp.scope}",
        f"expires in {resp.expires_in:.0f} s (at {_when(sent_at + resp.expires_in)})",
        f"credential: {_describe(creds)}",
    ]
    try:
        # for display only: the upstream, not we, verifies the signature
        header = jwt.get_unverified_header(resp.access_token)
        claims = jwt.decode(resp.access_token, options={"verify_signature": False})
    except jwt.PyJWTError:
        lines.append("the access token is not a JWT, so there are no claims to show")
    else:
        lines.append(f"header: {orjson.dumps(header).decode()}")
        lines.append("claims:")
        lines.append(orjson.dumps(claims, option=orjson.OPT_INDENT_2).decode())
    if raw:
        lines.append("access token:")
        lines.append(resp.access_token)
    return "\n".join(lines)


def _describe(creds: Credentials) -> str:
    text = f"certificate {creds.subject}" if creds.x5c is not None else creds.subject
    if creds.not_after is not None:
        text += f", valid until {creds.not_after.strftime('%Y-%m-%d %H:%M:%S UTC')}"
    return text


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
