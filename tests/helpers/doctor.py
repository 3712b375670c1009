"""The stand-ins for `relay doctor` tests, running in a thread of their own so that the doctor
can run in the test's thread (`relay.cli.main`, which calls asyncio.run) or as a subprocess.

    with StandIns(tmp_path, pki_dir) as up:
        config = up.config(tmp_path / "relay.toml", transport="http")
        up.set_faults(refuse_tokens_text="Failed to validate the token")
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import urllib.request
from pathlib import Path

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from relay.dev.certs import TestPki, make_test_pki
from relay.dev.upstream import DevUpstream, UpstreamAddresses
from tests.helpers.processes import free_port

__all__ = ["StandIns", "make_stand_in_pki"]


def make_stand_in_pki(directory: Path, password: str) -> TestPki:
    """What a DevUpstream makes in DATA/pki on first use (the test PKI, with a keystore password
    of the test's own, and Maskinporten's token-signing key), made once for many StandIns."""
    pki = make_test_pki(directory, password=password)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (directory / "token-signing.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pki


class StandIns:
    """`DevUpstream` (Maskinporten and the status service on free ports) in a thread. `pki`: a
    folder a DevUpstream made before (copied, so the slow key generation happens once)."""

    def __init__(self, data: Path, pki: Path | None = None) -> None:
        self.data = data
        if pki is not None and not (data / "pki").exists():
            shutil.copytree(pki, data / "pki")
        self.upstream = DevUpstream(data)
        self.addresses: UpstreamAddresses | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> StandIns:
        self._thread.start()
        self.addresses = self._run(
            self.upstream.start(rsocket_port=0, http_port=0, maskinporten_port=0)
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self._run(self.upstream.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def config(self, path: Path, transport: str = "rsocket", extra: str = "") -> Path:
        """A relay configuration for these stand-ins, its spool under `path`'s folder and its
        listener on a free port where nothing runs. `extra`: TOML appended (whole tables)."""
        text = self.upstream.relay_config(transport)
        text += f'\n[spool]\npath = "{path.parent / "spool"}"\n'
        text += f'\n[ingest.http]\nlisten = "127.0.0.1:{free_port()}"\n'
        path.write_text(text + extra)
        return path

    def set_faults(self, **faults: object) -> None:
        assert self.addresses is not None
        request = urllib.request.Request(
            f"{self.addresses.status_url}/admin/faults", data=orjson.dumps(faults), method="POST"
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            answer.read()

    def stats(self) -> dict:
        assert self.addresses is not None
        with urllib.request.urlopen(f"{self.addresses.status_url}/api/stats", timeout=5) as r:
            return orjson.loads(r.read())
