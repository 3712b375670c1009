"""Fixtures shared by the tests; the helpers themselves live in `tests/helpers/`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import RelayProcess, UpstreamProcess

# Fixtures that start `relay run` / `relay dev-upstream` as subprocesses: a test using one is
# end-to-end by definition (markers in pyproject.toml), whatever its module says.
SUBPROCESS_FIXTURES = frozenset({"relay_factory", "upstream_factory"})
# Tests of the JetStream backend that run real NATS servers (clusters of three, a peer no one here
# wrote) are interop: `make test` runs them in its second pytest, beside the long sequence of the
# others, where they cost no extra time; `make test-fast` leaves them out (a quarter of its time).
NATS_FIXTURES = frozenset({"cluster", "nats_cluster"})
NATS_MODULES = frozenset({"test_jetstream_spool.py", "test_jetstream_admin.py"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if SUBPROCESS_FIXTURES.intersection(fixtures):
            item.add_marker(pytest.mark.e2e)
        elif "jetstream" in item.nodeid and (
            item.path.name in NATS_MODULES or NATS_FIXTURES.intersection(fixtures)
        ):
            item.add_marker(pytest.mark.interop)


@pytest.fixture(autouse=True)
def _subprocesses_only_in_slow_tests(request: pytest.FixtureRequest, monkeypatch) -> None:
    """`make test-fast` stays fast: a test outside e2e/interop that starts `relay run` or
    `relay dev-upstream` fails, saying to mark it (or to test the part in-process)."""
    if request.node.get_closest_marker("e2e") or request.node.get_closest_marker("interop"):
        return

    def refuse(self, *args, **kwargs):
        raise AssertionError(
            f"{type(self).__name__}.start in a test not marked e2e: mark it pytest.mark.e2e, "
            "or test the part in this process"
        )

    monkeypatch.setattr(RelayProcess, "start", refuse)
    monkeypatch.setattr(UpstreamProcess, "start", refuse)


@pytest.fixture(autouse=True)
def _no_proxy_from_the_runner(monkeypatch) -> None:
    """The relay honours HTTPS_PROXY and friends; a CI runner's own must not send the tests'
    connections to 127.0.0.1 through its proxy (the proxy tests set theirs explicitly)."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def upstream_factory(tmp_path: Path):
    started: list[UpstreamProcess] = []

    def factory(name: str = "upstream", token_lifetime: float = 120.0) -> UpstreamProcess:
        up = UpstreamProcess(tmp_path / name, token_lifetime)
        started.append(up)
        return up.start()

    yield factory
    for up in started:
        up.kill()


@pytest.fixture
def relay_factory(tmp_path: Path):
    started: list[RelayProcess] = []

    def factory(
        spool: Path | None = None, env: dict[str, str] | None = None, config: Path | None = None
    ) -> RelayProcess:
        relay = RelayProcess(spool or tmp_path / "spool", env, config)
        started.append(relay)
        return relay

    yield factory
    for relay in started:
        relay.kill()
