"""`relay dev-upstream`: the Maskinporten and status-service stand-ins, wired to each other.

This is where the stand-ins are put together: StatusServer starts the status service's
transports (status_rsocket, status_http) on their ports around the transport-free core
(status_service), the way uvicorn's server.py starts the protocols its configuration names;
DevUpstream adds Maskinporten, whose tokens the status service verifies.

A throwaway PKI is made on first use; the status service trusts only tokens of this Maskinporten
stand-in. `relay.toml` in the data folder is a relay configuration that points at them.

Like the real service, the status stand-in drops JSON arrays after acknowledging them;
``accept_arrays`` (``--accept-arrays``) plays an upstream that takes them, and only then does
the generated configuration say ``upstream.accepts_arrays = true``.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from pathlib import Path

import orjson
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from relay.dev import status_http, status_rsocket
from relay.dev.certs import TEST_KID, TestPki, make_test_pki
from relay.dev.faults import StatusFaults
from relay.dev.maskinporten import ClientRegistration, MaskinportenFaults, MaskinportenStandIn
from relay.dev.status_http import HttpStandIn
from relay.dev.status_rsocket import RSocketStandIn
from relay.dev.status_service import StatusServiceStandIn
from relay.dev.status_tokens import CLOCK_SKEW

log = logging.getLogger("relay.dev")

DEFAULT_ORGNR = "991825827"
DEFAULT_SCOPE = "eformidling:dpo"


class StatusServer:
    """A status-service stand-in and the transports it listens on.

    close() closes the transports, then the service (its store): the server owns the service
    it is given.
    """

    def __init__(self, service: StatusServiceStandIn) -> None:
        self.service = service
        self.rsocket: RSocketStandIn | None = None
        self.http: HttpStandIn | None = None

    async def start(
        self, host: str = "127.0.0.1", *, rsocket_port: int | None = 7070, http_port: int | None = 0
    ) -> None:
        """Listen with each transport whose port is given (0 = any free port); the bound ports
        are ``.rsocket.port`` and ``.http.port``. After a failure, close() still cleans up."""
        if self.rsocket is not None or self.http is not None:
            raise RuntimeError("the status stand-in is already listening")
        if rsocket_port is not None:
            self.rsocket = await status_rsocket.start(host, rsocket_port, self.service)
        if http_port is not None:
            self.http = await status_http.start(host, http_port, self.service)

    async def close(self) -> None:
        if self.rsocket is not None:
            await self.rsocket.close()
        if self.http is not None:
            await self.http.close()
        self.service.close()


@dataclass(frozen=True)
class UpstreamAddresses:
    host: str
    rsocket_port: int
    http_port: int
    maskinporten_port: int

    @property
    def status_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def maskinporten_url(self) -> str:
        return f"http://{self.host}:{self.maskinporten_port}"


class DevUpstream:
    def __init__(
        self,
        data: Path,
        *,
        host: str = "127.0.0.1",
        orgnr: str = DEFAULT_ORGNR,
        scope: str = DEFAULT_SCOPE,
        token_lifetime: float = 120.0,
        ack_only: bool = False,
        accept_arrays: bool = False,
    ) -> None:
        self.data = Path(data)
        self.host = host
        self.orgnr = orgnr
        self.scope = scope
        self.client_id = f"MOVE_IP_{orgnr}"
        self.data.mkdir(parents=True, exist_ok=True)
        self.pki: TestPki = _load_or_make_pki(self.data / "pki", orgnr)
        self.maskinporten: MaskinportenStandIn | None = None
        self.status: StatusServiceStandIn | None = None
        self.status_server: StatusServer | None = None
        self.addresses: UpstreamAddresses | None = None
        self._token_lifetime = token_lifetime
        self._ack_only = ack_only
        self._accept_arrays = accept_arrays
        self._runner: web.AppRunner | None = None

    async def start(
        self, *, rsocket_port: int = 7070, http_port: int = 8090, maskinporten_port: int = 8091
    ) -> UpstreamAddresses:
        # the issuer URL holds the port, so the socket is bound before the stand-in is built
        sock = socket.create_server((self.host, maskinporten_port))
        mp_port = sock.getsockname()[1]
        issuer = f"http://{self.host}:{mp_port}/"
        registration = ClientRegistration(
            scopes=frozenset({self.scope}),
            orgnr=self.orgnr,
            kid_keys={self.pki.kid: self.pki.kid_pub.read_bytes()},
        )
        self.maskinporten = MaskinportenStandIn(
            issuer=issuer,
            audience=issuer,
            clients={self.client_id: registration},
            trusted_ca_pems=[self.pki.ca_cert_pem],
            faults=MaskinportenFaults(token_lifetime=self._token_lifetime),
            signing_key=_load_or_make_signing_key(self.data / "pki" / "token-signing.key"),
        )
        app = self.maskinporten.app()
        app.router.add_get("/admin/faults", self._get_mp_faults)
        app.router.add_post("/admin/faults", self._set_mp_faults)
        app.router.add_get("/admin/stats", self._get_mp_stats)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

        mp = self.maskinporten
        # No scope check: the real service checks only signature and expiry (60 s skew).
        self.status = StatusServiceStandIn(
            store_path=self.data / "received.db",
            verify_token=lambda token: mp.verify_access_token(token, leeway=CLOCK_SKEW),
            faults=StatusFaults(ack_only=self._ack_only, accept_arrays=self._accept_arrays),
        )
        server = self.status_server = StatusServer(self.status)
        await server.start(self.host, rsocket_port=rsocket_port, http_port=http_port)
        assert server.rsocket is not None and server.http is not None
        self.addresses = UpstreamAddresses(
            self.host, server.rsocket.port, server.http.port, mp_port
        )
        (self.data / "relay.toml").write_text(self.relay_config())
        return self.addresses

    def relay_config(self, transport: str = "rsocket") -> str:
        """A relay configuration (TOML) that delivers to these stand-ins."""
        a = self.addresses
        return (
            "# written by `relay dev-upstream`: a relay wired to the local stand-ins\n"
            "[upstream]\n"
            f'transport = "{transport}"\n'
            f'host = "{a.host}"\n'
            f"port = {a.rsocket_port}\n"
            f'http_url = "{a.status_url}/api/status"\n'
            + ("accepts_arrays = true\n" if self._accept_arrays else "")
            + "\n"
            "[maskinporten]\n"
            f'token_url = "{a.maskinporten_url}/token"\n'
            f'audience = "{a.maskinporten_url}/"\n'
            f'client_id = "{self.client_id}"\n'
            f'scope = "{self.scope}"\n'
            f'key_file = "{self.pki.leaf_key}"\n'
            f'cert_file = "{self.pki.leaf_cert}"\n'
        )

    async def _get_mp_faults(self, _: web.Request) -> web.Response:
        return web.json_response(vars(self.maskinporten.faults))

    async def _get_mp_stats(self, _: web.Request) -> web.Response:
        mp = self.maskinporten
        return web.json_response({"issued": mp.issued, "signers": mp.signers[-1000:]})

    async def _set_mp_faults(self, request: web.Request) -> web.Response:
        try:
            changes = orjson.loads(await request.read())
            faults = self.maskinporten.faults
            for name, value in changes.items():
                if not hasattr(faults, name):
                    raise ValueError(f"unknown fault {name!r}")
                setattr(faults, name, type(getattr(faults, name))(value))
        except (ValueError, TypeError, AttributeError) as exc:
            return web.Response(status=400, text=f"{exc}\n")
        return web.json_response(vars(self.maskinporten.faults))

    async def close(self) -> None:
        if self.status_server is not None:
            await self.status_server.close()
        if self._runner is not None:
            await self._runner.cleanup()


def _load_or_make_signing_key(path: Path) -> rsa.RSAPrivateKey:
    """The Maskinporten stand-in's token-signing key, kept so that a restarted stand-in still
    accepts the tokens it issued before (a status-service restart does not change the real
    Maskinporten's keys)."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if isinstance(key, rsa.RSAPrivateKey):
            return key
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return key


def _load_or_make_pki(directory: Path, orgnr: str) -> TestPki:
    """The PKI of an earlier run, so a restarted stand-in still trusts a running relay."""
    password = "changeit"
    files = {
        "ca_cert": "ca.pem",
        "leaf_cert": "leaf.pem",
        "leaf_key": "leaf.key",
        "keystore": "keystore.p12",
        "kid_key": "kid.key",
        "kid_pub": "kid.pub",
    }
    paths = {name: directory / file for name, file in files.items()}
    if not all(p.exists() for p in paths.values()):
        return make_test_pki(directory, orgnr=orgnr, password=password)
    return TestPki(
        directory=directory,
        password=password,
        orgnr=orgnr,
        kid=TEST_KID,
        ca_cert_pem=paths["ca_cert"].read_bytes(),
        **paths,
    )
