"""Delivery end to end with real processes: relay, Maskinporten and status-service stand-ins."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from relay import event as event_model
from tests.helpers import (
    FAST_RETRY,
    RelayProcess,
    UpstreamProcess,
    make_event,
    received_ids,
    send,
    spool_stats,
    wait_until,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def upstream_factory(upstream_factory):
    """conftest's factory, plus a check after each test: the stand-in dropped nothing.

    Like the real service, the stand-in acknowledges over RSocket what it then cannot use
    (an array, bad JSON, a logger_name other than STATUS); only its ``dropped`` count shows
    such a loss, so every test here asserts it stayed 0."""
    started: list[UpstreamProcess] = []

    def factory(*args, **kwargs) -> UpstreamProcess:
        up = upstream_factory(*args, **kwargs)
        started.append(up)
        return up

    yield factory
    for up in started:
        if up.proc is not None and up.proc.poll() is None:
            stats = up.stats()
            assert stats["dropped"] == 0, f"the stand-in dropped {stats['dropped_by_reason']}"


@pytest.mark.parametrize("transport", ["rsocket", "http"])
def test_events_arrive_once_as_sent(
    transport: str, upstream_factory, relay_factory, tmp_path: Path
) -> None:
    up = upstream_factory()
    relay = relay_factory(config=up.config, env={"RELAY_UPSTREAM__TRANSPORT": transport}).start()
    events = [make_event(status=s) for s in ("OPPRETTET", "SENDT", "LEVERT") for _ in range(100)]
    send(relay, events)
    wait_until(lambda: up.stats()["total"] >= len(events), 30, "all events upstream")
    got = {s["message_id"]: s for s in up.statuses()}
    assert len(got) == len(events)
    assert up.stats()["duplicates"] == 0
    for sent in events:
        stored = dict(got[sent["message_id"]])
        received = stored.pop("_received")
        assert stored == event_model.normalise(sent)
        assert stored["logger_name"] == "STATUS"
        assert received["transport"] == transport
        assert received["client_id"] == "MOVE_IP_991825827"
    wait_until(lambda: spool_stats(relay)["depth"] == 0, 10, "the spool to drain")
    assert up.stats()["dropped"] == 0


def test_short_lived_tokens_never_fail_a_delivery(upstream_factory, relay_factory) -> None:
    up = upstream_factory(token_lifetime=3)
    relay = relay_factory(config=up.config).start()
    started = time.monotonic()
    sent = 0
    # a fixed 10 s of sending on purpose: deliveries across several token lifetimes (3 s), and
    # the token fetches counted over that time
    while time.monotonic() - started < 10:
        send(relay, [make_event() for _ in range(20)])
        sent += 20
        time.sleep(0.1)
    wait_until(lambda: up.stats()["total"] >= sent, 20, "all events upstream")
    elapsed = time.monotonic() - started
    stats = up.stats()
    assert stats["rsocket"]["errors"] == 0, "a request was refused (expired token?)"
    # about one fetch per refresh period (half of a 3 s lifetime), never one per event
    assert up.tokens_issued() <= elapsed / 1.0 + 2
    assert "Access Denied" not in relay.output()
    assert "Jwt expired" not in relay.output()


def test_upstream_and_relay_killed_mid_stream_lose_nothing(
    upstream_factory, relay_factory, tmp_path: Path
) -> None:
    up = upstream_factory()
    relay = relay_factory(config=up.config, env=FAST_RETRY).start()
    acked: list[dict] = []
    for round_ in range(6):
        batch = [make_event() for _ in range(200)]
        send(relay, batch)
        acked += batch
        if round_ == 1:
            up.kill()
            time.sleep(1.0)
            send(relay, batch := [make_event() for _ in range(200)])
            acked += batch
            up.start()
        if round_ == 3:
            relay.kill()
            relay.start()
    wait_until(lambda: set(received_ids(up)) >= {e["message_id"] for e in acked}, 60, "every event")
    # the upstream's store survived its restart; duplicates are allowed, losses are not, and
    # an acknowledged-then-dropped request is a loss too
    assert up.stats()["dropped"] == 0


def test_token_endpoint_down_events_wait_then_flow(upstream_factory, relay_factory) -> None:
    up = upstream_factory(token_lifetime=3)
    relay = relay_factory(config=up.config, env=FAST_RETRY).start()
    send(relay, [make_event()])
    wait_until(lambda: up.stats()["total"] == 1, 20, "the first event")
    up.maskinporten_faults(unavailable=True)
    time.sleep(3.5)  # the token expires while the endpoint is down
    events = [make_event() for _ in range(50)]
    send(relay, events)
    time.sleep(1.5)
    assert up.stats()["total"] == 1, "delivered without a valid token?"
    up.maskinporten_faults(unavailable=False)
    wait_until(lambda: up.stats()["total"] == 51, 30, "events after the token endpoint is back")
    assert spool_stats(relay)["dead_letters"] == 0


def test_rejected_kind_is_dead_lettered_and_replayable(upstream_factory, relay_factory) -> None:
    up = upstream_factory()
    env = {**FAST_RETRY, "RELAY_RETRY__MAX_REJECTIONS": "3"}
    relay = relay_factory(config=up.config, env=env).start()
    up.faults(reject_match={"status": "FEIL"})
    good = [make_event(status="LEVERT") for _ in range(100)]
    bad = [make_event(status="FEIL") for _ in range(5)]
    mixed = good[:50] + bad + good[50:]
    send(relay, mixed)
    wait_until(lambda: up.stats()["total"] >= 100, 30, "the good events")
    wait_until(lambda: spool_stats(relay)["dead_letters"] == 5, 30, "the FEIL events to die")
    assert up.stats()["by_status"].get("FEIL", 0) == 0

    listing = subprocess.run(
        [sys.executable, "-m", "relay", "dlq", "list", "--json"],
        env=relay.env,
        capture_output=True,
        timeout=30,
    )
    letters = orjson.loads(listing.stdout)
    assert {orjson.loads(d["event"])["message_id"] for d in letters} == {
        e["message_id"] for e in bad
    }
    assert all(d["reason"] == "rejected" and d["attempts"] == 3 for d in letters)
    assert "rejected by stand-in fault switch" in letters[0]["last_error"]

    up.faults(reject_match={})
    replay = subprocess.run(
        [sys.executable, "-m", "relay", "dlq", "replay", "--all"],
        env=relay.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert replay.returncode == 0, replay.stderr
    wait_until(lambda: up.stats()["by_status"].get("FEIL", 0) == 5, 30, "replayed events")
    assert spool_stats(relay)["dead_letters"] == 0


def test_in_flight_bound_and_flat_memory_while_upstream_is_down(
    upstream_factory, relay_factory
) -> None:
    up = upstream_factory()
    relay = relay_factory(
        config=up.config, env={**FAST_RETRY, "RELAY_UPSTREAM__MAX_IN_FLIGHT": "8"}
    ).start()
    up.faults(delay=0.2)
    send(relay, [make_event() for _ in range(200)])
    wait_until(lambda: up.stats()["total"] >= 200, 30, "the events")
    assert 1 < up.stats()["rsocket"]["max_in_flight"] <= 8

    up.kill()
    rss = []
    # 20 s of outage (many redials at the capped backoff), with producers still sending: a
    # sample of the relay's memory each second
    for _ in range(20):
        send(relay, [make_event() for _ in range(100)])
        rss.append(_rss_kib(relay.proc.pid))
        time.sleep(1)
    # after warm-up, memory stays flat: the backlog lives on disk, not in the process
    assert max(rss[5:]) - rss[5] < 8 * 1024, rss
    up.start()
    wait_until(lambda: up.stats()["total"] >= 200 + 2000, 60, "the backlog to drain")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_relay_token_command_with_keystore_and_pem(upstream_factory, tmp_path: Path) -> None:
    up = upstream_factory()
    pki = up.data / "pki"
    base = up.config.read_text().split("key_file")[0]
    variants = {
        "pem": f'key_file = "{pki / "leaf.key"}"\ncert_file = "{pki / "leaf.pem"}"\n',
        "p12": f'keystore = "{pki / "keystore.p12"}"\n',
        "kid": f'key_file = "{pki / "kid.key"}"\nkid = "relay-test-kid"\n',
    }
    for name, creds in variants.items():
        config = tmp_path / f"{name}.toml"
        config.write_text(base + creds)
        result = subprocess.run(
            [sys.executable, "-m", "relay", "token", "--config", str(config)],
            env={"RELAY_KEYSTORE_PASSWORD": "changeit", "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, (name, result.stderr)
        assert "MOVE_IP_991825827" in result.stdout
        assert "eyJ" not in result.stdout  # the token itself only with --raw
    wrong = subprocess.run(
        [sys.executable, "-m", "relay", "token", "--config", str(tmp_path / "p12.toml")],
        env={"RELAY_KEYSTORE_PASSWORD": "wrong-password", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert wrong.returncode == 2
    assert len(wrong.stderr.strip().splitlines()) == 1
    assert "password" in wrong.stderr and "wrong-password" not in wrong.stderr


def test_batches_go_as_json_arrays(upstream_factory, relay_factory) -> None:
    up = upstream_factory()
    # the real service drops arrays after acking them: only an upstream that says so takes them
    up.faults(accept_arrays=True)
    env = {"RELAY_UPSTREAM__BATCH_SIZE": "50", "RELAY_UPSTREAM__ACCEPTS_ARRAYS": "true"}
    relay = relay_factory(config=up.config, env=env).start()
    events = [make_event() for _ in range(1000)]
    send(relay, events)
    wait_until(lambda: up.stats()["total"] >= 1000, 30, "all events upstream")
    assert set(received_ids(up)) == {e["message_id"] for e in events}
    stats = up.stats()
    assert stats["requests"] <= 1000 / 10
    assert stats["dropped"] == 0


def test_dev_upstream_accept_arrays_switch_and_the_config_it_writes(tmp_path: Path) -> None:
    for flag, arrays in (([], False), (["--accept-arrays"], True)):
        data = tmp_path / f"up-{arrays}"
        args = [sys.executable, "-m", "relay", "dev-upstream", "--data", str(data), *flag]
        args += ["--rsocket-port", "0", "--http-port", "0", "--maskinporten-port", "0"]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            line = proc.stdout.readline()
            assert line.startswith("READY"), line
            http = dict(part.split("=", 1) for part in line.split()[1:])["http"]
            with urllib.request.urlopen(http + "/admin/faults", timeout=5) as r:
                assert orjson.loads(r.read())["accept_arrays"] is arrays
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        config = (data / "relay.toml").read_text()
        assert ("accepts_arrays = true" in config) is arrays


def test_a_service_refusing_the_first_token_costs_no_event(upstream_factory, relay_factory) -> None:
    """Acceptance 3: a Spring-faithful peer refuses the first token it sees."""
    up = upstream_factory()
    up.faults(refuse_first_tokens=1)
    relay = relay_factory(config=up.config, env=FAST_RETRY).start()
    events = [make_event() for _ in range(300)]
    send(relay, events)
    wait_until(lambda: up.stats()["total"] >= len(events), 15, "every event delivered")
    stats = up.stats()
    assert set(received_ids(up)) == {e["message_id"] for e in events}
    assert stats["requests"] == stats["total"], "every request one event"
    assert stats["by_status"] and all(s["logger_name"] == "STATUS" for s in up.statuses())
    assert spool_stats(relay)["dead_letters"] == 0


def test_a_service_refusing_every_token_keeps_the_events_and_says_why(
    upstream_factory, relay_factory
) -> None:
    up = upstream_factory()
    text = "Failed to validate the token"
    up.faults(refuse_tokens_text=text)
    relay = relay_factory(config=up.config, env=FAST_RETRY).start()
    send(relay, [make_event() for _ in range(20)])
    wait_until(lambda: text in readyz(relay)[1], 15, "not-ready with the service's text")
    assert readyz(relay)[0] == 503
    assert spool_stats(relay)["dead_letters"] == 0
    up.faults(refuse_tokens_text="")
    wait_until(lambda: up.stats()["total"] == 20, 30, "the events once tokens are accepted")


def readyz(relay: RelayProcess) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(relay.url + "/readyz", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_http_sink_retries_5xx_and_reports_403_as_not_ready(
    upstream_factory, relay_factory
) -> None:
    up = upstream_factory()
    env = {**FAST_RETRY, "RELAY_UPSTREAM__TRANSPORT": "http"}
    relay = relay_factory(config=up.config, env=env).start()
    up.faults(http_status=503, http_fraction=0.5, retry_after=1)
    events = [make_event() for _ in range(100)]
    send(relay, events)
    wait_until(lambda: up.stats()["total"] >= 100, 30, "events past the 503s")
    assert set(received_ids(up)) == {e["message_id"] for e in events}

    up.faults(http_status=403, http_fraction=1.0)
    send(relay, [make_event()])
    wait_until(lambda: readyz(relay)[0] == 503, 20, "not-ready on 403")
    assert "403" in readyz(relay)[1]
    up.faults(http_status=0)
    wait_until(lambda: up.stats()["total"] == 101, 20, "the event after the 403s")
    wait_until(lambda: readyz(relay)[0] == 200, 10, "ready again")
    assert spool_stats(relay)["dead_letters"] == 0


def test_frozen_upstream_times_out_then_keepalive_reconnects(
    upstream_factory, relay_factory
) -> None:
    up = upstream_factory()
    env = {
        **FAST_RETRY,
        "RELAY_UPSTREAM__REQUEST_TIMEOUT": "1s",
        "RELAY_UPSTREAM__KEEPALIVE_INTERVAL": "1s",
        "RELAY_UPSTREAM__KEEPALIVE_MAX_LIFETIME": "3s",
    }
    relay = relay_factory(config=up.config, env=env).start()
    send(relay, [make_event()])
    wait_until(lambda: up.stats()["total"] == 1, 20, "the first event")
    up.proc.send_signal(signal.SIGSTOP)  # alive but silent: TCP stays up, nothing answers
    try:
        events = [make_event() for _ in range(50)]
        send(relay, events)
        wait_until(lambda: "no keepalive" in relay.output(), 20, "the keepalive timeout")
    finally:
        up.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: up.stats()["total"] >= 51, 30, "the events after the freeze")
    assert set(received_ids(up)) >= {e["message_id"] for e in events}
    assert "timeout" in relay.output()


def test_slow_answers_time_out_are_cancelled_and_retried(upstream_factory, relay_factory) -> None:
    timeout = 1.0
    env = {**FAST_RETRY, "RELAY_UPSTREAM__REQUEST_TIMEOUT": f"{timeout}s"}
    up = upstream_factory()
    relay = relay_factory(config=up.config, env=env).start()
    send(relay, [make_event()])
    wait_until(lambda: up.stats()["total"] == 1, 20, "the first event")
    # answers come well after the timeout: each request must fail as a timeout and be
    # cancelled, so the stand-in drops its work and stores nothing
    up.faults(delay=4 * timeout)
    events = [make_event() for _ in range(5)]
    send(relay, events)
    wait_until(lambda: timeout_retries(relay) >= 2 * len(events), 30, "repeated timeouts")
    assert up.stats()["total"] == 1
    up.faults(delay=0.0)
    wait_until(lambda: up.stats()["total"] == 1 + len(events), 30, "the events once it is fast")
    assert set(received_ids(up)) >= {e["message_id"] for e in events}
    assert up.stats()["duplicates"] == 0


def timeout_retries(relay: RelayProcess) -> float:
    with urllib.request.urlopen(relay.url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    match = re.search(r'^relay_delivery_retries_total{reason="timeout"} (\S+)$', text, re.M)
    assert match, "no timeout retries in /metrics"
    return float(match.group(1))


def test_an_upstream_refusing_everything_dead_letters_nothing(
    upstream_factory, relay_factory
) -> None:
    up = upstream_factory()
    relay = relay_factory(config=up.config, env=FAST_RETRY).start()
    send(relay, [make_event() for _ in range(50)])
    wait_until(lambda: up.stats()["total"] == 50, 20, "healthy deliveries first")
    up.faults(reject_fraction=1.0)  # e.g. its backend is down and it answers APPLICATION_ERROR
    send(relay, [make_event() for _ in range(300)])
    time.sleep(8)  # long enough for every event to be refused well over max_rejections times
    assert spool_stats(relay)["dead_letters"] == 0
    up.faults(reject_fraction=0.0)
    wait_until(lambda: up.stats()["total"] == 350, 30, "the backlog after the upstream heals")


def test_a_refused_batch_is_judged_event_by_event(upstream_factory, relay_factory) -> None:
    up = upstream_factory()
    up.faults(accept_arrays=True)  # batches are arrays: only for an upstream that takes them
    env = {
        **FAST_RETRY,
        "RELAY_UPSTREAM__BATCH_SIZE": "10",
        "RELAY_UPSTREAM__ACCEPTS_ARRAYS": "true",
        "RELAY_RETRY__MAX_REJECTIONS": "2",
    }
    relay = relay_factory(config=up.config, env=env).start()
    send(relay, [make_event() for _ in range(30)])
    wait_until(lambda: up.stats()["total"] == 30, 20, "healthy deliveries first")
    up.faults(reject_match={"status": "FEIL"})
    events = [make_event(status="FEIL" if i % 10 == 3 else "LEVERT") for i in range(100)]
    send(relay, events)
    wait_until(lambda: up.stats()["total"] >= 30 + 90, 30, "the good events of the batches")
    wait_until(lambda: spool_stats(relay)["dead_letters"] == 10, 30, "only the FEIL ones to die")
    assert up.stats()["by_status"].get("FEIL", 0) == 0
