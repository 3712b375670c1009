"""The monitoring pack in deploy/monitoring/: rules and dashboard that Prometheus and Grafana take,
alerts that fire when they should (promtool's rule unit tests), and only metrics the relay exports.

promtool comes with Debian's `prometheus` package (`.ci/run` takes it out into .venv/bin);
without it the tests that need it skip and say so. The check against a running relay is e2e: it
starts the stand-ins and a relay delivering to them, with the syslog listeners on, over TLS for
TCP (the UDP drop counter and the listener certificate's expiry are theirs).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from tests.helpers import RelayProcess, UpstreamProcess, wait_until

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "deploy" / "monitoring"
RULE_FILES = sorted(p for p in PACK.glob("*.yml") if p.name != "tests.yml")
DASHBOARD = PACK / "relay-dashboard.json"
README = PACK / "README.md"

# what Grafana puts in for its variables, so that an expression can be checked as PromQL
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}

# a relay_ name in an expression: not a recording rule (relay:...), not inside a string
_METRIC = re.compile(r"\brelay_[a-zA-Z0-9_]+")


@pytest.fixture(scope="module")
def promtool() -> str:
    # .ci/run puts it in .venv/bin (taken out of the package) when it is not installed
    path = shutil.which("promtool") or shutil.which("promtool", path=str(ROOT / ".venv" / "bin"))
    if path is None:
        pytest.skip(
            "promtool not found: install Debian's prometheus package, or run .ci/run, which "
            "takes promtool out of it into .venv/bin"
        )
    return path


def _rules() -> Iterator[dict]:
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            yield from group["rules"]


def _alerts() -> list[dict]:
    return [rule for rule in _rules() if "alert" in rule]


def _dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def _as_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return re.sub(r"\$\{?\w+\}?", ".+", expr)  # $job, $instance in =~ matchers


def _named_metrics() -> set[str]:
    exprs = [rule["expr"] for rule in _rules()] + _dashboard_expressions()
    return {name for expr in exprs for name in _METRIC.findall(_strip_strings(expr))}


def _strip_strings(expr: str) -> str:
    return re.sub(r'"[^"]*"', '""', expr)


def test_there_are_rule_files() -> None:
    assert RULE_FILES, f"no rules file in {PACK}"


def test_rule_files_pass_promtool_check(promtool: str) -> None:
    for path in RULE_FILES:
        run = subprocess.run(
            [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, f"{path.name}:\n{run.stdout}{run.stderr}"


def test_rule_unit_tests_pass(promtool: str) -> None:
    run = subprocess.run(
        [promtool, "test", "rules", "tests.yml"],
        cwd=PACK,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    """Each alert has a promtool case where it fires and one where it is expected silent; the
    healthy series beside the firing one are silent because exp_alerts lists alerts exactly."""
    firing: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load((PACK / "tests.yml").read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {alert["alert"] for alert in _alerts()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - silent == set(), "alerts never tested silent"


def test_alerts_follow_the_mixin_conventions() -> None:
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in README.read_text().splitlines()
        if line.startswith("#")
    }
    for alert in _alerts():
        name = alert["alert"]
        assert alert["labels"]["severity"] in ("warning", "critical"), name
        annotations = alert["annotations"]
        assert {"summary", "description", "runbook_url"} <= set(annotations), name
        url = annotations["runbook_url"]
        assert "deploy/monitoring/README.md#" in url, name
        anchor = url.rsplit("#", 1)[1]
        assert anchor == name.lower(), f"{name}: runbook_url should end in #{name.lower()}"
        assert anchor in anchors, f"{name}: README.md has no '### {name}' runbook paragraph"


def test_dashboard_is_importable_with_one_data_source_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = dashboard["templating"]["list"]
    sources = [v for v in variables if v["type"] == "datasource"]
    assert len(sources) == 1 and sources[0]["query"] == "prometheus"
    source = "${" + sources[0]["name"] + "}"
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == source, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source, panel["title"]
    for variable in variables:
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == source, variable["name"]


def test_dashboard_expressions_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """promtool has no bare parser: each expression becomes a recording rule, which `check
    rules` parses (Grafana's variables replaced by what Grafana would put in)."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = _dashboard_expressions()
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.*), *\w+\)", variable["query"]["query"])
            assert match, variable["name"]
            exprs.append(match.group(1))
    rules = [{"record": f"dashboard:expr_{i}", "expr": _as_promql(e)} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard-exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(rules)} rules found" in run.stdout


def test_the_dashboard_shows_what_the_issue_asks_for() -> None:
    named = {name for expr in _dashboard_expressions() for name in _METRIC.findall(expr)}
    wanted = {
        "relay_received_events_total",
        "relay_rejected_events_total",
        "relay_spool_events",
        "relay_spool_bytes",
        "relay_spool_capacity_bytes",
        "relay_spool_oldest_event_age_seconds",
        "relay_delivered_events_total",
        "relay_delivery_latency_seconds_bucket",
        "relay_delivery_retries_total",
        "relay_dead_lettered_events_total",
        "relay_upstream_connected",
        "relay_token_expires_in_seconds",
    }
    assert wanted - named == set()


def _exported(text: str) -> set[str]:
    """The names of the samples a scrape holds (a declared family without samples does not
    count: a panel or rule on it would show nothing)."""
    return {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


@pytest.mark.e2e
def test_every_metric_named_is_exported_by_a_running_relay(tmp_path: Path) -> None:
    up = UpstreamProcess(tmp_path / "upstream").start()
    relay = RelayProcess(
        tmp_path / "spool",
        {
            "RELAY_INGEST__SYSLOG__UDP_LISTEN": "127.0.0.1:0",
            "RELAY_INGEST__SYSLOG__TCP_LISTEN": "127.0.0.1:0",
            # a TLS listener, for its certificate's expiry (the stand-ins' leaf serves)
            "RELAY_INGEST__SYSLOG__TLS_CERT_FILE": str(up.data / "pki" / "leaf.pem"),
            "RELAY_INGEST__SYSLOG__TLS_KEY_FILE": str(up.data / "pki" / "leaf.key"),
        },
        config=up.config,
    )
    try:
        relay.start()

        def scrape() -> str:
            with urllib.request.urlopen(relay.url + "/metrics", timeout=5) as response:
                return response.read().decode()

        wait_until(
            lambda: "relay_upstream_connected 1.0" in scrape(), 20, "the upstream connection"
        )
        text = scrape()
    finally:
        relay.kill()
        up.kill()
    exported = _exported(text)
    assert _named_metrics() - exported == set(), "named in deploy/monitoring, not exported"

    # the new metric: the business certificate's expiry, as in the certificate file
    cert_file = tomllib.loads(up.config.read_text())["maskinporten"]["cert_file"]
    leaf = x509.load_pem_x509_certificates(Path(cert_file).read_bytes())[0]
    line = re.search(r"^relay_certificate_expiry_timestamp_seconds (\S+)$", text, re.M)
    assert line, "relay_certificate_expiry_timestamp_seconds is not exported"
    assert float(line.group(1)) == leaf.not_valid_after_utc.timestamp()
    assert leaf.not_valid_after_utc > dt.datetime.now(dt.UTC)
