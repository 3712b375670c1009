"""Reload without restart, in this process: `serve` with a configuration file, SIGHUP sent to
ourselves, and the outcome read where an operator reads it (/status, the log, the behaviour)."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from relay.config import load_config
from relay.dev.maskinporten import ClientRegistration, MaskinportenStandIn
from relay.logs import JsonFormatter, apply_logging, setup_logging
from relay.server import serve
from tests.helpers import eventually, free_port, make_event
from tests.helpers.renewal import ORGNR, BusinessCA
from tests.helpers.tls import make_tls_pki, peer_serial, renew_server_cert, serial_of


class Running:
    def __init__(self, url: str, config: Path, caplog: pytest.LogCaptureFixture) -> None:
        self.url, self.config, self.caplog = url, config, caplog
        self.ssl: ssl.SSLContext | bool = False

    async def status(self) -> dict:
        async with aiohttp.ClientSession() as s, s.get(self.url + "/status", ssl=self.ssl) as r:
            return await r.json()

    async def post(self, token: str | None = None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with (
            aiohttp.ClientSession() as s,
            s.post(self.url + "/api/status", json=make_event(), headers=headers, ssl=self.ssl) as r,
        ):
            return r.status

    async def reload(self, toml: str | None = None, *, expect_ok: bool = True) -> dict:
        """Rewrite the file (when given), SIGHUP, and wait for the outcome in /status."""
        before = (await self.status())["config"]
        if toml is not None:
            self.config.write_text(toml)
        os.kill(os.getpid(), signal.SIGHUP)
        done: list[dict] = []

        async def reloaded() -> bool:
            now = (await self.status())["config"]
            done[:] = [now]
            return (
                now["reloads"] + now["failed_reloads"]
                > before["reloads"] + before["failed_reloads"]
            )

        await eventually(reloaded, 10, "the reload to finish", lambda: self.caplog.text)
        assert (done[0]["last_reload"] == "ok") is expect_ok, done[0]
        return done[0]

    def lines(self, pattern: str) -> list[str]:
        return [r.getMessage() for r in self.caplog.records if re.search(pattern, r.getMessage())]


@asynccontextmanager
async def running(
    tmp_path: Path, toml: str, caplog: pytest.LogCaptureFixture, scheme: str = "http"
) -> AsyncIterator[Running]:
    caplog.set_level(logging.INFO)
    config = tmp_path / "relay.toml"
    config.write_text(toml)
    stop = asyncio.Event()
    server = asyncio.create_task(serve(load_config(config), stop, config_path=str(config)))
    ready = re.compile(r"relay ready: http [^ ,;]*:(\d+)")
    found: list[re.Match] = []

    def said() -> bool:
        if server.done():
            server.result()  # raises what stopped it
        found[:] = [m for r in caplog.records if (m := ready.search(r.getMessage()))]
        return bool(found)

    try:
        await eventually(said, 20, "the relay ready line", lambda: caplog.text)
        yield Running(f"{scheme}://127.0.0.1:{found[-1].group(1)}", config, caplog)
    finally:
        stop.set()
        await asyncio.wait_for(server, 20)


def _base(tmp_path: Path, extra: str = "") -> str:
    return (
        f'[spool]\npath = "{tmp_path / "spool"}"\n'
        '[ingest.http]\nlisten = "127.0.0.1:0"\n'
        f'auth_token_file = "{tmp_path / "token"}"\n' + extra
    )


async def test_reload_applies_token_and_log_level_and_names_what_needs_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "token").write_text("first-token\n")
    async with running(tmp_path, _base(tmp_path), caplog) as relay:
        assert await relay.post("first-token") == 200
        status = await relay.status()
        assert status["config"]["file"] == str(relay.config)
        assert status["config"]["last_reload"] is None
        loaded_at = status["config"]["loaded_at"]

        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "token").write_text("second-token\n")
        moved = _base(tmp_path / "elsewhere").replace('"127.0.0.1:0"', '"127.0.0.1:1"')
        changes = '[log]\nlevel = "debug"\n[retry]\nmax_rejections = 2\n'
        outcome = await relay.reload(moved + changes)

        assert await relay.post("second-token") == 200
        assert await relay.post("first-token") == 401
        assert logging.getLogger().level == logging.DEBUG
        assert outcome["loaded_at"] >= loaded_at
        # the spool and the listener stay as they run, and exactly those are named, once
        assert outcome["restart_needed"] == ["ingest.http.listen", "spool.path"]
        warnings = relay.lines("only a restart applies them")
        assert len(warnings) == 1, warnings
        assert "ingest.http.listen, spool.path" in warnings[0]
        applied = relay.lines("configuration reloaded from")
        assert "log.level" in applied[0] and "retry.max_rejections" in applied[0], applied
        assert "ingest.http.auth_token_file" in applied[0]  # the path moved with the spool
        assert "second-token" not in relay.caplog.text  # the token itself is never logged
        assert not [r for r in (await relay.status())["reasons"] if "reload" in r]

        # two signals at once: two reloads, one after the other, never interleaved
        caplog.clear()
        os.kill(os.getpid(), signal.SIGHUP)
        await relay.reload()
        await eventually(
            lambda: len(relay.lines("configuration reloaded from")) == 2, 10, "both reloads"
        )
        lines = relay.lines("^configuration reloaded from|^reloading the configuration")
        steps = ["begin" if m.startswith("reloading") else "end" for m in lines]
        assert steps == ["begin", "end", "begin", "end"], lines


async def test_a_broken_file_keeps_the_running_configuration_whole(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "token").write_text("the-token\n")
    good = _base(tmp_path)
    async with running(tmp_path, good, caplog) as relay:
        # not TOML at all
        outcome = await relay.reload(good + "[log\nlevel = \n", expect_ok=False)
        assert "relay.toml" in outcome["last_reload_error"]
        assert "\n" not in outcome["last_reload_error"]
        status = await relay.status()
        assert status["status"] == "degraded"
        assert any("last configuration reload failed" in r for r in status["reasons"])

        # valid TOML, one valid change, one setting that does not load: nothing is applied
        (tmp_path / "other-token").write_text("")
        half = good.replace(str(tmp_path / "token"), str(tmp_path / "other-token"))
        outcome = await relay.reload(half + '[log]\nlevel = "debug"\n', expect_ok=False)
        assert "auth_token_file" in outcome["last_reload_error"]
        assert logging.getLogger().level == logging.INFO
        assert await relay.post("the-token") == 200

        # an invalid value
        outcome = await relay.reload(good + '[log]\nlevel = "loud"\n', expect_ok=False)
        assert "log.level" in outcome["last_reload_error"]
        assert outcome["failed_reloads"] == 3
        failures = relay.lines("configuration reload failed, the running configuration stays")
        assert len(failures) == 3 and all("\n" not in f for f in failures)

        # fixed: applied, and /status no longer says it failed
        outcome = await relay.reload(good, expect_ok=True)
        assert outcome["last_reload_error"] is None
        assert not [r for r in (await relay.status())["reasons"] if "reload" in r]
        assert await relay.post("the-token") == 200


async def test_a_renewed_listener_certificate_is_served_to_new_connections(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pki = make_tls_pki(tmp_path / "pki")
    (tmp_path / "token").write_text("t\n")
    tls = f'tls_cert_file = "{pki.server_cert}"\ntls_key_file = "{pki.server_key}"\n'
    lines = '[ingest.json_lines]\ntcp_listen = "127.0.0.1:0"\n'
    toml = _base(tmp_path, tls + lines + tls)
    async with running(tmp_path, toml, caplog, scheme="https") as relay:
        relay.ssl = pki.client_context()
        ready = relay.lines("relay ready")[-1]
        ports = {
            "http": int(relay.url.rsplit(":", 1)[1]),
            "json lines": int(re.search(r"json lines [^ ,;]*:(\d+)", ready).group(1)),
        }

        async def served() -> dict[str, int]:
            """The serial of the certificate each listener shows a new connection."""
            serials = {}
            for name, port in ports.items():
                _, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=pki.client_context(), server_hostname="localhost"
                )
                serials[name] = peer_serial(writer.get_extra_info("ssl_object"))
                writer.close()
            return serials

        old = serial_of(pki.server_cert)
        assert await served() == {"http": old, "json lines": old}
        new = renew_server_cert(pki)
        outcome = await relay.reload()
        assert outcome["restart_needed"] == []
        assert await served() == {"http": new, "json lines": new}
        summary = relay.lines("reloaded from")[0]
        assert "TLS certificates re-read for ingest.http, ingest.json_lines" in summary

        # turning on client certificates is a restart: named, and the listener stays as it is
        mutual = toml + f'tls_client_ca_file = "{pki.ca_cert}"\n'
        outcome = await relay.reload(mutual)
        assert outcome["restart_needed"] == ["ingest.json_lines.tls_client_ca_file"]
        assert await served() == {"http": new, "json lines": new}  # no client cert needed

        # a certificate that does not load refuses the whole reload; the served one stays
        pki.server_key.write_text("not a key\n")
        outcome = await relay.reload(toml, expect_ok=False)
        assert "ingest.http" in outcome["last_reload_error"]
        assert await served() == {"http": new, "json lines": new}


async def test_renewed_credentials_sign_the_next_grant(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = BusinessCA(tmp_path / "ca")
    cert, key = tmp_path / "business.pem", tmp_path / "business.key"
    first = ca.issue(cert, key)
    client = "MOVE_IP_" + ORGNR
    stand_in = MaskinportenStandIn(
        issuer="http://mp/",
        audience="http://mp/",
        clients={client: ClientRegistration(frozenset({"eformidling:dpo"}), ORGNR)},
        trusted_ca_pems=[ca.ca_pem],
    )
    async with stand_in.serve() as mp_url:
        toml = (
            f'[spool]\npath = "{tmp_path / "spool"}"\n'
            '[ingest.http]\nlisten = "127.0.0.1:0"\n'
            # nothing listens there: delivery waits, the token provider still works
            f'[upstream]\nhost = "127.0.0.1"\nport = {free_port()}\n'
            f'[maskinporten]\ntoken_url = "{mp_url}/token"\naudience = "http://mp/"\n'
            f'client_id = "{client}"\nkey_file = "{key}"\ncert_file = "{cert}"\n'
        )
        async with running(tmp_path, toml, caplog) as relay:
            await eventually(lambda: stand_in.signers, 10, "the first grant")
            assert stand_in.signers == [f"x5c serial {first:x}"]

            # the same files again: nothing renewed, no new grant asked for
            outcome = await relay.reload()
            assert "credentials re-read, unchanged" in relay.lines("reloaded from")[-1]

            second = ca.issue(cert, key)
            outcome = await relay.reload()
            assert outcome["last_reload"] == "ok"
            await eventually(lambda: len(stand_in.signers) >= 2, 10, "a grant after the reload")
            # the token in hand was not thrown away first: every grant after is the new one
            assert stand_in.signers == [f"x5c serial {first:x}", f"x5c serial {second:x}"]
            assert "credentials renewed" in relay.lines("reloaded from")[-1]
            status = await relay.status()
            assert status["token"]["last_error"] is None
            assert status["token"]["fetches"]["ok"] == 2

            # a key that does not belong to the certificate: refused, the renewed pair stays
            ca.issue(tmp_path / "third.pem", key)
            outcome = await relay.reload(expect_ok=False)
            assert "does not match the certificate" in outcome["last_reload_error"]
            assert "PRIVATE KEY" not in outcome["last_reload_error"]


async def test_a_renewed_keystore_with_a_new_password_signs_the_next_grant(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = BusinessCA(tmp_path / "ca")
    staging_cert, staging_key = tmp_path / "staging.pem", tmp_path / "staging.key"
    keystore, password = tmp_path / "business.p12", tmp_path / "keystore-password"

    def renew(secret: str) -> int:
        serial = ca.issue(staging_cert, staging_key)
        password.write_text(secret + "\n")
        keystore.write_bytes(ca.keystore(staging_cert, staging_key, secret))
        return serial

    first = renew("first-secret")
    client = "MOVE_IP_" + ORGNR
    stand_in = MaskinportenStandIn(
        issuer="http://mp/",
        audience="http://mp/",
        clients={client: ClientRegistration(frozenset({"eformidling:dpo"}), ORGNR)},
        trusted_ca_pems=[ca.ca_pem],
    )
    async with stand_in.serve() as mp_url:
        toml = (
            f'[spool]\npath = "{tmp_path / "spool"}"\n'
            '[ingest.http]\nlisten = "127.0.0.1:0"\n'
            f'[upstream]\nhost = "127.0.0.1"\nport = {free_port()}\n'
            f'[maskinporten]\ntoken_url = "{mp_url}/token"\naudience = "http://mp/"\n'
            f'client_id = "{client}"\nkeystore = "{keystore}"\n'
            f'keystore_password_file = "{password}"\n'
        )
        async with running(tmp_path, toml, caplog) as relay:
            await eventually(lambda: stand_in.signers, 10, "the first grant")
            second = renew("second-secret")
            await relay.reload()
            await eventually(lambda: len(stand_in.signers) == 2, 10, "a grant after the reload")
            assert stand_in.signers == [f"x5c serial {first:x}", f"x5c serial {second:x}"]

            # the keystore renewed but the password file not yet: refused without the secret
            renew("third-secret")
            password.write_text("second-secret\n")
            outcome = await relay.reload(expect_ok=False)
            assert "wrong password" in outcome["last_reload_error"]
            assert "secret" not in caplog.text and "secret" not in str(await relay.status())
            assert len(stand_in.signers) == 2


def test_log_settings_change_the_relays_own_handler_only() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("info", "text")
        host = logging.StreamHandler()  # a host program's (or pytest's) handler
        root.addHandler(host)
        apply_logging("debug", "json")
        ours = [h for h in root.handlers if h.get_name() == "relay"]
        assert len(ours) == 1 and isinstance(ours[0].formatter, JsonFormatter)
        assert not isinstance(host.formatter, JsonFormatter)
        assert root.level == logging.DEBUG
        apply_logging("warning", "text")
        assert not isinstance(ours[0].formatter, JsonFormatter)
        assert root.level == logging.WARNING
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
