"""What a reload asks of the token provider: new credentials sign the very next grant, at once,
while the token in hand stays usable; against the real Maskinporten stand-in."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from relay.auth.credentials import load_credentials
from relay.auth.tokens import TokenProvider
from relay.config import MaskinportenConfig
from relay.dev.maskinporten import ClientRegistration, MaskinportenStandIn
from tests.helpers import eventually
from tests.helpers.renewal import ORGNR, BusinessCA

CLIENT = "MOVE_IP_" + ORGNR


@asynccontextmanager
async def stand_in(ca: BusinessCA) -> AsyncIterator[tuple[MaskinportenStandIn, str]]:
    mp = MaskinportenStandIn(
        issuer="http://mp/",
        audience="http://mp/",
        clients={CLIENT: ClientRegistration(frozenset({"eformidling:dpo"}), ORGNR)},
        trusted_ca_pems=[ca.ca_pem],
    )
    async with mp.serve() as url:
        yield mp, url


def _config(url: str, cert: Path, key: Path) -> MaskinportenConfig:
    return MaskinportenConfig(
        token_url=f"{url}/token",
        audience="http://mp/",
        client_id=CLIENT,
        key_file=str(key),
        cert_file=str(cert),
    )


async def test_new_credentials_sign_the_next_grant_at_once_and_the_old_token_stays(
    tmp_path: Path,
) -> None:
    ca = BusinessCA(tmp_path)
    cert, key = tmp_path / "a.pem", tmp_path / "a.key"
    first = ca.issue(cert, key)
    async with stand_in(ca) as (mp, url):
        cfg = _config(url, cert, key)
        tokens = TokenProvider(cfg, load_credentials(cfg))
        try:
            old_token = await tokens.token()
            second = ca.issue(cert, key)
            tokens.replace_credentials(cfg, load_credentials(cfg), fetch=True)
            # not at the refresh time two minutes away: now; and the old token serves meanwhile
            assert tokens.current() == old_token
            await eventually(lambda: len(mp.signers) == 2, 5, "a second grant")
            assert mp.signers == [f"x5c serial {first:x}", f"x5c serial {second:x}"]
            await eventually(lambda: tokens.current() != old_token, 5, "the new token in use")
            # unchanged credentials (fetch=False) ask for nothing
            tokens.replace_credentials(cfg, load_credentials(cfg), fetch=False)
            assert tokens.fetches["ok"] == 2
        finally:
            await tokens.close()


async def test_new_credentials_do_not_wait_out_a_backoff_pause(tmp_path: Path) -> None:
    ca = BusinessCA(tmp_path)
    cert, key = tmp_path / "a.pem", tmp_path / "a.key"
    ca.issue(cert, key)
    async with stand_in(ca) as (mp, url):
        cfg = _config(url, cert, key)
        mp.faults.unavailable = True
        # a pause of up to 30 s after the failure, drawn at random
        tokens = TokenProvider(cfg, load_credentials(cfg), initial_backoff=30, max_backoff=30)
        try:
            await tokens.start()
            await eventually(lambda: tokens.fetches["http_error"] == 1, 5, "a failed fetch")
            mp.faults.unavailable = False
            renewed = ca.issue(cert, key)
            started = dt.datetime.now()
            tokens.replace_credentials(cfg, load_credentials(cfg), fetch=True)
            await eventually(lambda: mp.signers, 5, "a grant with the renewed certificate")
            assert mp.signers == [f"x5c serial {renewed:x}"]
            assert dt.datetime.now() - started < dt.timedelta(seconds=5)
            assert await tokens.token()
        finally:
            await tokens.close()
