"""Acceptance 5: a renewed business certificate is used after SIGHUP, without a restart and
without a lost request. A real `relay run` delivers to the stand-ins over RSocket while a
producer keeps posting; the Maskinporten stand-in says which certificate signed each grant."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.helpers import make_event, post, received_ids, wait_until
from tests.helpers.renewal import BusinessCA, seed_standin_pki

pytestmark = pytest.mark.e2e


class Producer:
    """Posts events one after another until stopped; remembers every answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent: list[str] = []
        self.failures: list[tuple[int, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Producer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            event = make_event()
            status, body = post(self.url, event)
            if status == 200:
                self.sent.append(event["message_id"])
            else:
                self.failures.append((status, body))


def _reload_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "relay", "reload", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _exec_reload(pid: int) -> list[str]:
    """deploy/relay.service's ExecReload command line for a main process `pid`."""
    unit = Path(__file__).parents[2] / "deploy" / "relay.service"
    lines = [ln for ln in unit.read_text().splitlines() if ln.startswith("ExecReload=")]
    assert len(lines) == 1, "relay.service has one ExecReload"
    return lines[0].removeprefix("ExecReload=").replace("$MAINPID", str(pid)).split()


def test_a_renewed_certificate_signs_the_next_grant_and_no_request_is_lost(
    tmp_path: Path, upstream_factory, relay_factory
) -> None:
    ca = BusinessCA(tmp_path / "ca")
    seed_standin_pki(tmp_path / "upstream", ca)  # the stand-in trusts this CA
    up = upstream_factory("upstream")
    cert, key = tmp_path / "business.pem", tmp_path / "business.key"
    serials = [ca.issue(cert, key)]
    pidfile = tmp_path / "relay.pid"
    config = tmp_path / "relay.toml"
    good = (
        up.config.read_text()
        .replace(f'"{tmp_path / "upstream" / "pki" / "leaf.key"}"', f'"{key}"')
        .replace(f'"{tmp_path / "upstream" / "pki" / "leaf.pem"}"', f'"{cert}"')
    ) + f'\n[lifecycle]\npid_file = "{pidfile}"\n'
    assert str(cert) in good and str(key) in good
    config.write_text(good)
    relay = relay_factory(config=config).start()
    assert pidfile.read_text().strip() == str(relay.proc.pid)

    def signers() -> list[str]:
        return up.get(up.maskinporten_url + "/admin/stats")["signers"]

    def grants_by(*numbers: int) -> bool:
        return signers() == [f"x5c serial {n:x}" for n in numbers]

    def said(text: str) -> bool:
        return text in relay.output()

    def more_posted(producer: Producer, count: int = 30) -> None:
        """Producers go on being served across each reload (their answers are checked below)."""
        posted = len(producer.sent)
        wait_until(lambda: len(producer.sent) >= posted + count, 30, "more events posted")

    with Producer(relay.url) as producer:
        wait_until(lambda: grants_by(*serials), 20, "the first grant", relay.output)
        wait_until(lambda: len(producer.sent) >= 50, 30, "events posted", relay.output)

        # 1. renewed on disk, SIGHUP: the next grant is signed with the new certificate
        serials.append(ca.issue(cert, key))
        relay.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: grants_by(*serials), 20, "a grant with the renewal", relay.output)
        assert said("Maskinporten credentials renewed")
        more_posted(producer)

        # 2. the same through `relay reload --pid-file` and `relay reload --config`
        serials.append(ca.issue(cert, key))
        done = _reload_cli("--pid-file", str(pidfile))
        assert done.returncode == 0, done.stderr
        wait_until(lambda: grants_by(*serials), 20, "a grant after relay reload", relay.output)
        more_posted(producer)
        serials.append(ca.issue(cert, key))
        done = _reload_cli("--config", str(config))
        assert done.returncode == 0, done.stderr
        wait_until(lambda: grants_by(*serials), 20, "a grant after --config", relay.output)
        more_posted(producer)
        # and the unit's ExecReload, as `systemctl reload relay` runs it
        serials.append(ca.issue(cert, key))
        done = subprocess.run(_exec_reload(relay.proc.pid), capture_output=True, timeout=30)
        assert done.returncode == 0, done.stderr
        wait_until(lambda: grants_by(*serials), 20, "a grant after ExecReload", relay.output)
        more_posted(producer)

        # 3. a broken file: refused with its reason, the relay goes on with the old settings
        config.write_text(good.replace("[maskinporten]", "[maskinporten\n"))
        relay.proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: said("configuration reload failed, the running configuration stays"),
            20,
            "the refusal in the log",
            relay.output,
        )
        more_posted(producer)
        assert relay.proc.poll() is None
        assert grants_by(*serials)  # no grant with anything else

        # 4. fixed, and the log switched to JSON lines on the way
        config.write_text(good + '\n[log]\nformat = "json"\n')
        relay.proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: said('"message":"configuration reloaded from'), 20, "JSON logs", relay.output
        )
        more_posted(producer)

    assert producer.failures == []
    missing: set[str] = set()

    def all_delivered() -> bool:
        missing.clear()
        missing.update(set(producer.sent) - set(received_ids(up)))
        return not missing

    wait_until(all_delivered, 60, "every posted event delivered", lambda: f"{len(missing)} missing")
    assert relay.stop() == 0
    assert not pidfile.exists()
    # the relay is gone: `relay reload` says so in one line
    done = _reload_cli("--pid-file", str(pidfile))
    assert done.returncode == 2
    assert done.stderr.startswith("relay: error: pid file") and done.stderr.count("\n") == 1
    assert "Traceback" not in relay.output()
