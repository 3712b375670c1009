"""Which proxy a connection goes through (relay.delivery.proxy) and how proxy settings are
validated (relay.config.proxy): precedence, NO_PROXY, credentials, masking."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest

from relay.cli import main
from relay.config import UpstreamConfig, load_config
from relay.delivery.proxy import (
    ProxyProblem,
    bypassed,
    choose_proxy,
    proxied_session,
    proxy_for_url,
    rsocket_proxy,
)
from relay.errors import ConfigError


def choose(url: str, environ: dict[str, str], setting: str = "", password_file: str = ""):
    return proxy_for_url(
        url,
        setting=setting,
        setting_name="upstream.proxy",
        password_file=password_file,
        password_setting="upstream.proxy_password_file",
        environ=environ,
    )


def test_no_setting_and_no_environment_means_direct() -> None:
    assert choose("https://status.example/api", {}) is None


def test_the_explicit_setting_wins_over_the_environment_and_no_proxy() -> None:
    env = {"HTTPS_PROXY": "http://env-proxy:8080", "NO_PROXY": "*"}
    proxy = choose("https://status.example/api", env, setting="http://mine:3128")
    assert (proxy.host, proxy.port, proxy.source) == ("mine", 3128, "upstream.proxy")


@pytest.mark.parametrize(
    ("url", "env", "expected"),
    [
        ("https://a.example", {"HTTPS_PROXY": "http://up:1"}, ("up", "HTTPS_PROXY")),
        ("https://a.example", {"https_proxy": "http://low:2"}, ("low", "https_proxy")),
        # lower case first, as curl reads them
        (
            "https://a.example",
            {"https_proxy": "http://low:2", "HTTPS_PROXY": "http://up:1"},
            ("low", "https_proxy"),
        ),
        ("http://a.example", {"HTTP_PROXY": "http://h:1"}, ("h", "HTTP_PROXY")),
        ("http://a.example", {"http_proxy": "http://h:1"}, ("h", "http_proxy")),
        # the scheme picks the variable: an https target ignores HTTP_PROXY
        ("https://a.example", {"HTTP_PROXY": "http://h:1"}, None),
        ("http://a.example", {"HTTPS_PROXY": "http://s:1"}, None),
        ("https://a.example", {"ALL_PROXY": "http://all:1"}, ("all", "ALL_PROXY")),
        (
            "https://a.example",
            {"ALL_PROXY": "http://all:1", "HTTPS_PROXY": "http://s:1"},
            ("s", "HTTPS_PROXY"),
        ),
        ("https://a.example", {"HTTPS_PROXY": "  "}, None),
    ],
)
def test_the_environment_variable_follows_the_scheme(url, env, expected) -> None:
    proxy = choose(url, env)
    if expected is None:
        assert proxy is None
    else:
        assert (proxy.host, proxy.source) == (expected[0], f"environment variable {expected[1]}")


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "direct"),
    [
        ("status.example", 443, "*", True),
        ("status.example", 443, "status.example", True),
        ("STATUS.example.", 443, "status.EXAMPLE", True),
        ("api.status.example", 443, "status.example", True),
        ("api.status.example", 443, ".status.example", True),
        ("api.status.example", 443, "*.status.example", True),
        ("status.example", 443, ".status.example", True),
        ("badstatus.example", 443, "status.example", False),
        ("status.example.org", 443, "status.example", False),
        ("status.example", 443, "other.example, status.example", True),
        ("status.example", 443, "other.example status.example", True),
        ("status.example", 443, "status.example:443", True),
        ("status.example", 7070, "status.example:443", False),
        ("10.1.2.3", 7070, "10.1.2.3", True),
        ("10.1.2.3", 7070, "10.0.0.0/8", True),
        ("11.1.2.3", 7070, "10.0.0.0/8", False),
        ("10.1.2.3", 7070, "10.1.2.4", False),
        ("10.1.2.3", 7070, "10.1.2.3:7070", True),
        ("10.1.2.3", 7070, "10.1.2.3:7071", False),
        ("::1", 7070, "::1", True),
        ("::1", 7070, "[::1]:7070", True),
        ("::1", 7070, "[::1]:7071", False),
        ("fd00::5", 7070, "fd00::/8", True),
        ("10.1.2.3", 7070, "example", False),  # a name never matches an address
        ("status.example", 443, "", False),
        ("status.example", 443, ",,", False),
    ],
)
def test_no_proxy_rules(host: str, port: int, no_proxy: str, direct: bool) -> None:
    assert bypassed(host, port, no_proxy) is direct


def test_no_proxy_in_either_case_sends_the_host_direct() -> None:
    for variable in ("NO_PROXY", "no_proxy"):
        env = {"HTTPS_PROXY": "http://p:3128", variable: "localhost,.internal"}
        assert choose("https://token.internal/token", env) is None
        assert choose("https://maskinporten.no/token", env) is not None


def test_rsocket_is_tunnelled_with_the_https_variables_and_honours_no_proxy() -> None:
    upstream = UpstreamConfig(host="status.example", port=7070)
    proxy = rsocket_proxy(upstream, environ={"HTTPS_PROXY": "http://p:3128"})
    assert (proxy.host, proxy.port) == ("p", 3128)
    assert rsocket_proxy(upstream, environ={"HTTP_PROXY": "http://p:3128"}) is None
    env = {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "status.example:7070"}
    assert rsocket_proxy(upstream, environ=env) is None


def test_credentials_from_the_url_are_decoded_and_sent_but_never_shown() -> None:
    proxy = choose("https://a.example", {}, setting="http://us%40er:p%3Ass@proxy:3128")
    assert (proxy.user, proxy.password) == ("us@er", "p:ss")
    expected = base64.b64encode(b"us@er:p:ss").decode()
    assert proxy.authorization == f"Basic {expected}"
    assert proxy.url == "http://proxy:3128"
    assert "p:ss" not in proxy.shown and "p%3Ass" not in proxy.shown
    assert proxy.shown == "http://us@er:***@proxy:3128"
    assert "p:ss" not in repr(proxy) and "p%3Ass" not in repr(proxy)


def test_the_password_file_supplies_the_password(tmp_path: Path) -> None:
    secret = tmp_path / "proxy-password"
    secret.write_text("s3cret-from-file\n")
    proxy = choose(
        "https://a.example", {}, setting="http://relay@proxy:3128", password_file=str(secret)
    )
    assert (proxy.user, proxy.password) == ("relay", "s3cret-from-file")
    # the file also serves a proxy from the environment that names the user
    env = {"HTTPS_PROXY": "http://relay@envproxy:8080"}
    proxy = choose("https://a.example", env, password_file=str(secret))
    assert (proxy.host, proxy.password) == ("envproxy", "s3cret-from-file")


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"", "one line"), (b"a\nb\n", "one line"), (b"x" * 5000, "larger than a password")],
)
def test_an_unusable_password_file_is_one_line(tmp_path: Path, content: bytes, expected: str):
    secret = tmp_path / "pw"
    secret.write_bytes(content)
    with pytest.raises(ProxyProblem) as caught:
        choose("https://a.example", {}, setting="http://u@p:1", password_file=str(secret))
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_a_missing_password_file_at_start_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ProxyProblem, match="cannot read upstream.proxy_password_file"):
        choose("https://a.example", {}, setting="http://u@p:1", password_file=str(tmp_path / "x"))


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("proxy:3128", "must start with http://"),
        ("https://proxy:3128", "https:// proxy"),
        ("socks5://proxy:1080", "only http:// proxies"),
        ("http://proxy", "has no port"),
        ("http://:3128", "has no host"),
        ("http://proxy:99999", "invalid port"),
        ("http://proxy:3128/path", "no path"),
        ("http://pro xy:3128", "contains spaces"),
    ],
)
def test_a_bad_proxy_variable_is_one_line_naming_it_masked(value: str, problem: str) -> None:
    env = {"HTTPS_PROXY": value.replace("://", "://user:hunter2@", 1) if "://" in value else value}
    with pytest.raises(ProxyProblem) as caught:
        choose("https://a.example", env)
    message = str(caught.value)
    assert message.startswith("environment variable HTTPS_PROXY ")
    assert problem in message and "hunter2" not in message and "\n" not in message


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("proxy.example:3128", "must start with http://"),
        ("https://proxy.example:3128", "https:// proxy"),
        ("http://proxy.example", "has no port"),
        ("http://user:hunter2@proxy.example", "has no port"),
    ],
)
def test_check_config_names_a_bad_proxy_setting(value: str, problem: str) -> None:
    for section in ("UPSTREAM", "MASKINPORTEN"):
        variable = f"RELAY_{section}__PROXY"
        with pytest.raises(ConfigError) as caught:
            load_config(None, environ={variable: value})
        message = str(caught.value)
        assert message.startswith(f"{section.lower()}.proxy"), message
        assert problem in message and "hunter2" not in message and "\n" not in message


def test_check_config_checks_the_password_file(tmp_path: Path) -> None:
    env = {
        "RELAY_UPSTREAM__PROXY": "http://relay@proxy:3128",
        "RELAY_UPSTREAM__PROXY_PASSWORD_FILE": str(tmp_path / "missing"),
    }
    with pytest.raises(ConfigError, match="upstream.proxy_password_file .* does not exist"):
        load_config(None, environ=env)
    (tmp_path / "missing").write_text("pw\n")
    assert load_config(None, environ=env).upstream.proxy == "http://relay@proxy:3128"
    env["RELAY_UPSTREAM__PROXY"] = "http://proxy:3128"
    with pytest.raises(ConfigError, match="names no user"):
        load_config(None, environ=env)


async def test_the_session_uses_the_chosen_proxy_and_logs_it_masked(caplog, monkeypatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://relay:hunter2@envproxy:8080")
    monkeypatch.delenv("https_proxy", raising=False)
    caplog.set_level(logging.INFO, logger="relay.delivery.proxy")
    session = proxied_session("https://token.example/token", "maskinporten", "", "")
    try:
        assert str(session._default_proxy) == "http://envproxy:8080"  # noqa: SLF001
        assert session._default_proxy_auth.password == "hunter2"  # noqa: SLF001
        assert not session.trust_env
    finally:
        await session.close()
    assert "envproxy:8080" in caplog.text and "hunter2" not in caplog.text


def test_choose_proxy_for_a_host_and_port() -> None:
    env = {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "10.0.0.0/8"}
    kwargs = {"setting": "", "setting_name": "upstream.proxy", "environ": env}
    assert choose_proxy("https", "10.2.3.4", 7070, **kwargs) is None
    assert choose_proxy("https", "status.example", 7070, **kwargs).host == "p"


def test_check_config_says_it_in_one_line(monkeypatch, capsys) -> None:
    monkeypatch.setenv("RELAY_MASKINPORTEN__PROXY", "https://relay:hunter2@proxy.example:3128")
    code = main(["check-config"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("relay: error: maskinporten.proxy from environment variable")
    assert "https:// proxy" in err and "hunter2" not in err and "relay:***@" in err
