"""Tests for relay.config: defaults, parsing, file + environment loading, validation, rendering."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.config import (
    Config,
    HttpIngestConfig,
    IngestConfig,
    JsonLinesIngestConfig,
    LogConfig,
    MaskinportenConfig,
    RetryConfig,
    SpoolConfig,
    SyslogIngestConfig,
    UpstreamConfig,
    format_duration,
    format_size,
    load_config,
    parse_duration,
    parse_listen,
    parse_size,
    render_config,
    validate_config,
)
from relay.errors import ConfigError, UserError

EXAMPLE = Path(__file__).resolve().parents[2] / "relay.example.toml"
KiB = 1024
MiB = 1024**2
GiB = 1024**3
TiB = 1024**4


def write(tmp_path: Path, text: str, name: str = "relay.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(tmp_path: Path, text: str | None, environ: dict[str, str] | None = None) -> str:
    """Load and return the ConfigError message, checking it is a single line."""
    path = None if text is None else write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=environ or {})
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert message
    return message


# --------------------------------------------------------------------------- defaults


def test_defaults() -> None:
    cfg = Config()
    assert cfg.ingest.http == HttpIngestConfig(
        listen="127.0.0.1:8080",
        max_body_bytes=10 * MiB,
        auth_token_file="",
    )
    assert cfg.ingest.max_event_bytes == 64 * KiB
    assert cfg.ingest.syslog == SyslogIngestConfig(tcp_listen="", udp_listen="")
    assert cfg.ingest.json_lines == JsonLinesIngestConfig(tcp_listen="")
    assert cfg.spool == SpoolConfig(
        path="./relay-data", max_bytes=GiB, when_full="reject", dedup_window=86400.0
    )
    assert cfg.upstream == UpstreamConfig(
        transport="rsocket",
        host="qa-meldingsutveksling.difi.no",
        port=7070,
        tls=False,
        route="log-fire",
        http_url="https://qa-meldingsutveksling.difi.no/logging/api/status",
        max_in_flight=128,
        request_timeout=10.0,
        batch_size=1,
        keepalive_interval=20.0,
        keepalive_max_lifetime=90.0,
    )
    assert cfg.retry == RetryConfig(initial_backoff=0.2, max_backoff=30.0, max_rejections=5)
    assert cfg.maskinporten == MaskinportenConfig(
        token_url="https://test.maskinporten.no/token",
        audience="https://test.maskinporten.no/",
        client_id="",
        scope="eformidling:dpo",
        keystore="",
        keystore_password_env="RELAY_KEYSTORE_PASSWORD",
        keystore_password_file="",
        key_file="",
        cert_file="",
        kid="",
    )
    assert cfg.log == LogConfig(level="info", format="text")
    validate_config(cfg)


def test_field_types_follow_the_kind() -> None:
    cfg = Config()
    assert isinstance(cfg.upstream.request_timeout, float)
    assert isinstance(cfg.spool.max_bytes, int)
    assert isinstance(cfg.upstream.tls, bool)
    assert isinstance(cfg.upstream.port, int)


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().upstream.port = 1  # type: ignore[misc]


def test_no_file_and_no_env_gives_defaults() -> None:
    assert load_config(None, environ={}) == Config()


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, ""), environ={}) == Config()


def test_example_file_equals_defaults() -> None:
    assert load_config(EXAMPLE, environ={}) == Config()


def test_example_file_mentions_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    rendered = render_config(Config(), environ={})
    for line in rendered.splitlines():
        if line.startswith("["):
            assert line in text
        elif " = " in line:
            key = line.split(" = ")[0]
            assert f"\n{key} = " in text, key


def test_ingest_config_groups_sources() -> None:
    assert IngestConfig().http == HttpIngestConfig()


# --------------------------------------------------------------------------- durations, sizes


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("200ms", 0.2),
        ("0ms", 0.0),
        ("10s", 10.0),
        ("1.5s", 1.5),
        ("5m", 300.0),
        ("24h", 86400.0),
        ("30d", 30 * 86400.0),
        ("10", 10.0),
        (" 10 s ", 10.0),
        (10, 10.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_parse_duration(text: str | int | float, seconds: float) -> None:
    result = parse_duration(text, "x")
    assert result == seconds
    assert isinstance(result, float)


@pytest.mark.parametrize(
    "bad",
    ["", "abc", "10 seconds", "5M", "1e3s", "ms", "10s5", "-1s", "-5", -1, -0.5, True, None, [1]],
)
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"^upstream\.request_timeout "):
        parse_duration(bad, "upstream.request_timeout")  # type: ignore[arg-type]


def test_parse_duration_rejects_infinity() -> None:
    with pytest.raises(ConfigError, match="finite"):
        parse_duration(math.inf, "x")
    with pytest.raises(ConfigError, match="finite"):
        parse_duration("9" * 400 + "d", "x")


def test_parse_duration_negative_message() -> None:
    with pytest.raises(ConfigError, match=r'must not be negative, got "-1s"'):
        parse_duration("-1s", "x")


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (0, 0),
        (1234, 1234),
        ("1234", 1234),
        ("512B", 512),
        ("64KiB", 64 * KiB),
        ("10MiB", 10 * MiB),
        ("1GiB", GiB),
        ("1TiB", TiB),
        ("64KB", 64_000),
        ("10MB", 10_000_000),
        ("1GB", 1_000_000_000),
        ("2TB", 2 * 10**12),
        ("1gib", GiB),
        ("1.5KiB", 1536),
        (" 10 MiB ", 10 * MiB),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    result = parse_size(text, "x")
    assert result == size
    assert isinstance(result, int)


@pytest.mark.parametrize(
    "bad", ["", "abc", "10 megabytes", "10M", "1.5B", "-1", "-1KiB", -1, 1.5, True, None]
)
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"^spool\.max_bytes "):
        parse_size(bad, "spool.max_bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (0.25, "250ms"),
        (0.2, "200ms"),
        (1.5, "1500ms"),
        (10.0, "10s"),
        (90.0, "90s"),
        (300.0, "5m"),
        (3600.0, "1h"),
        (86400.0, "24h"),
        (2 * 86400.0, "2d"),
        (30 * 86400.0, "30d"),
        (0.0001, "0.0001s"),
        (1e-05, "0.00001s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text, "x") == seconds


@given(st.floats(min_value=0, allow_nan=False, allow_infinity=False))
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds), "x") == seconds


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0"), (1000, "1000"), (KiB, "1KiB"), (64 * KiB, "64KiB"), (10 * MiB, "10MiB")]
    + [(GiB, "1GiB"), (3 * TiB, "3TiB"), (1536, "1536"), (10**9, "1000000000")],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text
    assert parse_size(text, "x") == size


@given(st.integers(min_value=0, max_value=2**70))
def test_format_size_round_trips(size: int) -> None:
    assert parse_size(format_size(size), "x") == size


# --------------------------------------------------------------------------- listen addresses


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
        ("[::1]:8080", ("::1", 8080)),
        ("[::]:6514", ("::", 6514)),
        ("localhost:0", ("localhost", 0)),
        ("relay.internal:65535", ("relay.internal", 65535)),
    ],
)
def test_parse_listen(text: str, address: tuple[str, int]) -> None:
    assert parse_listen(text, "x") == address


def test_parse_listen_requires_a_host() -> None:
    with pytest.raises(ConfigError) as info:
        parse_listen(":8080", "ingest.http.listen")
    message = str(info.value)
    assert message.startswith("ingest.http.listen has no host")
    assert "0.0.0.0:8080" in message and "127.0.0.1:8080" in message


@pytest.mark.parametrize(
    "bad",
    ["", "8080", "localhost", "127.0.0.1:", "127.0.0.1:65536", "::1:8080", "[nope]:80"]
    + ["bad host:80", "127.0.0.1:80x", "[::1]8080", 8080],
)
def test_parse_listen_rejects(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"^ingest\.syslog\.tcp_listen "):
        parse_listen(bad, "ingest.syslog.tcp_listen")  # type: ignore[arg-type]


def test_parse_listen_asks_for_ipv6_brackets() -> None:
    with pytest.raises(ConfigError, match=r"brackets"):
        parse_listen("::1:8080", "x")


# --------------------------------------------------------------------------- file loading


def test_file_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [ingest]
        max_event_bytes = 1024

        [ingest.http]
        listen = "0.0.0.0:9090"
        max_body_bytes = "20MiB"

        [ingest.syslog]
        udp_listen = "127.0.0.1:514"

        [spool]
        dedup_window = "30m"

        [upstream]
        transport = "http"
        tls = true
        port = 443
        request_timeout = 2.5

        [log]
        format = "json"
        """,
    )
    cfg = load_config(path, environ={})
    assert cfg.ingest.http.listen == "0.0.0.0:9090"
    assert cfg.ingest.http.max_body_bytes == 20 * MiB
    assert cfg.ingest.max_event_bytes == 1024
    assert cfg.ingest.syslog.udp_listen == "127.0.0.1:514"
    assert cfg.spool.dedup_window == 1800.0
    assert cfg.upstream.transport == "http"
    assert cfg.upstream.tls is True
    assert cfg.upstream.port == 443
    assert cfg.upstream.request_timeout == 2.5
    assert cfg.log.format == "json"
    # Untouched keys keep their defaults.
    assert cfg.upstream.host == Config().upstream.host
    assert cfg.retry == RetryConfig()


def test_dotted_keys_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'ingest.http.listen = "127.0.0.1:1"\nupstream.port = 1\n')
    cfg = load_config(path, environ={})
    assert cfg.ingest.http.listen == "127.0.0.1:1"
    assert cfg.upstream.port == 1


def test_path_may_be_str_or_pathlike(tmp_path: Path) -> None:
    path = write(tmp_path, "[upstream]\nport = 1\n")
    assert load_config(str(path), environ={}) == load_config(path, environ={})


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value) == f"config file {path} not found"


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError):
        load_config(tmp_path / "nope.toml", environ={})


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path, environ={})


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[upstream]\nport = = 1\n")
    message = config_error(tmp_path, "[upstream]\nport = = 1\n")
    assert message.startswith(f"{path} is not valid TOML: ")
    assert "line 2" in message


def test_invalid_toml_duplicate_key(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[upstream]\nport = 1\nport = 2\n")
    assert "is not valid TOML" in message


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_bytes(b'[upstream]\nhost = "\xff"\n')
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(path, environ={})


# --------------------------------------------------------------------------- unknown keys


def test_unknown_key_in_file_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, '[upstream]\nhots = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert (
        str(info.value) == f"unknown setting upstream.hots in {path} (did you mean upstream.host?)"
    )


def test_unknown_key_in_env_suggests() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={"RELAY_SPOOL__PTH": "/x"})
    assert str(info.value) == (
        "unknown setting spool.pth from environment variable RELAY_SPOOL__PTH "
        "(did you mean spool.path?)"
    )


def test_unknown_nested_env_key_suggests() -> None:
    message = str(_env_error({"RELAY_INGEST__HTTP__LISTN": "127.0.0.1:1"}))
    assert "ingest.http.listn" in message
    assert "RELAY_INGEST__HTTP__LISTN" in message
    assert "did you mean ingest.http.listen?" in message


def test_unknown_section_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, '[upstrem]\nhost = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value) == f"unknown section upstrem in {path} (did you mean upstream?)"


def test_unknown_nested_section_suggests(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[ingest.htp]\nlisten = "127.0.0.1:1"\n')
    assert message.startswith("unknown section ingest.htp in ")
    assert "(did you mean ingest.http?)" in message


def test_unknown_without_close_match_has_no_suggestion(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[zzzzzz]\nq = 1\n")
    assert message.startswith("unknown section zzzzzz in ")
    assert "did you mean" not in message
    assert message.endswith("relay.example.toml lists every setting")


def test_key_in_wrong_place_suggests_by_name(tmp_path: Path) -> None:
    message = config_error(tmp_path, 'host = "example.org"\n')
    assert "unknown setting host in" in message
    assert "did you mean upstream.host?" in message


def test_unknown_section_from_env() -> None:
    message = str(_env_error({"RELAY_UPSTREM__HOST": "x"}))
    assert "upstrem.host" in message
    assert "RELAY_UPSTREM__HOST" in message
    assert "did you mean upstream.host?" in message


def test_env_naming_a_section_is_an_error() -> None:
    message = str(_env_error({"RELAY_INGEST__HTTP": "x"}))
    assert "RELAY_INGEST__HTTP" in message
    assert "RELAY_INGEST__HTTP__LISTEN" in message


def test_setting_used_as_section(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[upstream.host]\nname = "x"\n')
    assert message.startswith("upstream.host in ")
    assert "must be a string" in message


def test_section_used_as_setting(tmp_path: Path) -> None:
    message = config_error(tmp_path, 'upstream = "x"\n')
    assert "upstream in " in message
    assert "must be a table" in message


def test_unknown_key_message_never_shows_value(tmp_path: Path) -> None:
    message = str(_env_error({"RELAY_MASKINPORTEN__PASSWORD": "hunter2-secret"}))
    assert "hunter2-secret" not in message
    message = config_error(tmp_path, '[maskinporten]\npassword = "hunter2-secret"\n')
    assert "hunter2-secret" not in message


def test_every_dataclass_field_is_a_known_setting() -> None:
    # The loader derives keys from the dataclasses, so every field is settable from the env.
    def leaves(obj: object, prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
        out = []
        for f in dataclasses.fields(obj):  # type: ignore[arg-type]
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                out += leaves(value, (*prefix, f.name))
            else:
                out.append((*prefix, f.name))
        return out

    paths = leaves(Config(), ())
    assert ("ingest", "max_event_bytes") in paths
    for path in paths:
        name = "RELAY_" + "__".join(path).upper()
        try:
            load_config(None, environ={name: "1"})
        except ConfigError as exc:  # the value may be invalid, but the key must be known
            assert "unknown" not in str(exc), name


# --------------------------------------------------------------------------- environment


def _env_error(environ: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ=environ)
    assert "\n" not in str(info.value)
    return info.value


def test_env_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[upstream]\nhost = "from-file"\nport = 1\n')
    cfg = load_config(path, environ={"RELAY_UPSTREAM__HOST": "from-env"})
    assert cfg.upstream.host == "from-env"
    assert cfg.upstream.port == 1


def test_env_overrides_nested_ints_bools_durations_sizes() -> None:
    cfg = load_config(
        None,
        environ={
            "RELAY_INGEST__HTTP__LISTEN": "0.0.0.0:9000",
            "RELAY_INGEST__HTTP__MAX_BODY_BYTES": "20MiB",
            "RELAY_INGEST__JSON_LINES__TCP_LISTEN": "127.0.0.1:5044",
            "RELAY_SPOOL__MAX_BYTES": "5GiB",
            "RELAY_SPOOL__DEDUP_WINDOW": "1h",
            "RELAY_UPSTREAM__PORT": "8443",
            "RELAY_UPSTREAM__TLS": "true",
            "RELAY_UPSTREAM__REQUEST_TIMEOUT": "1.5s",
            "RELAY_UPSTREAM__MAX_IN_FLIGHT": " 16 ",
            "RELAY_RETRY__MAX_BACKOFF": "60",
            "RELAY_LOG__LEVEL": "debug",
        },
    )
    assert cfg.ingest.http.listen == "0.0.0.0:9000"
    assert cfg.ingest.http.max_body_bytes == 20 * MiB
    assert cfg.ingest.json_lines.tcp_listen == "127.0.0.1:5044"
    assert cfg.spool.max_bytes == 5 * GiB
    assert cfg.spool.dedup_window == 3600.0
    assert cfg.upstream.port == 8443
    assert cfg.upstream.tls is True
    assert cfg.upstream.request_timeout == 1.5
    assert cfg.upstream.max_in_flight == 16
    assert cfg.retry.max_backoff == 60.0
    assert cfg.log.level == "debug"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("Yes", True),
        ("false", False),
        ("False", False),
        ("0", False),
        ("no", False),
        ("NO", False),
    ],
)
def test_env_bools(text: str, value: bool) -> None:
    assert load_config(None, environ={"RELAY_UPSTREAM__TLS": text}).upstream.tls is value


@pytest.mark.parametrize("text", ["", "on", "2", "truthy"])
def test_env_bad_bool(text: str) -> None:
    message = str(_env_error({"RELAY_UPSTREAM__TLS": text}))
    assert message.startswith("upstream.tls from environment variable RELAY_UPSTREAM__TLS must be")
    assert "true or false" in message


def test_env_bad_int() -> None:
    assert str(_env_error({"RELAY_UPSTREAM__PORT": "abc"})) == (
        'upstream.port from environment variable RELAY_UPSTREAM__PORT must be an integer, got "abc"'
    )


@pytest.mark.parametrize("text", ["1.5", "0x10", "", "1e3"])
def test_env_int_must_be_decimal(text: str) -> None:
    assert "must be an integer" in str(_env_error({"RELAY_UPSTREAM__BATCH_SIZE": text}))


def test_env_bad_duration() -> None:
    message = str(_env_error({"RELAY_RETRY__MAX_BACKOFF": "soon"}))
    assert message.startswith(
        "retry.max_backoff from environment variable RELAY_RETRY__MAX_BACKOFF must be a duration"
    )


def test_env_bad_size() -> None:
    message = str(_env_error({"RELAY_SPOOL__MAX_BYTES": "lots"}))
    assert message.startswith(
        "spool.max_bytes from environment variable RELAY_SPOOL__MAX_BYTES must be a size"
    )


def test_env_names_are_case_insensitive_after_prefix_only() -> None:
    # Lower-case variables do not start with RELAY_ and are not settings.
    cfg = load_config(None, environ={"relay_upstream__host": "x", "RELAY_UPSTREAM__HOST": "y"})
    assert cfg.upstream.host == "y"


def test_env_without_separator_is_ignored() -> None:
    environ = {
        "RELAY_KEYSTORE_PASSWORD": "s3cret",
        "RELAY_SOMETHING": "whatever",
        "RELAY_UPSTREAM_HOST": "single-underscore-is-not-a-setting",
        "OTHER__THING": "x",
        "PATH": "/usr/bin",
    }
    assert load_config(None, environ=environ) == Config()


def test_env_value_strings_are_taken_verbatim() -> None:
    cfg = load_config(None, environ={"RELAY_MASKINPORTEN__CLIENT_ID": " MOVE_IP_991825827 "})
    assert cfg.maskinporten.client_id == " MOVE_IP_991825827 "


def test_environ_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    # monkeypatch restores os.environ afterwards; this is the only place it is touched.
    monkeypatch.setenv("RELAY_UPSTREAM__ROUTE", "from-os-environ")
    assert load_config(None).upstream.route == "from-os-environ"


# --------------------------------------------------------------------------- wrong types


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[upstream]\nport = "abc"', 'upstream.port in {} must be an integer, got "abc"'),
        ('[upstream]\nport = "7070"', 'upstream.port in {} must be an integer, got "7070"'),
        ("[upstream]\nport = 1.5", "upstream.port in {} must be an integer, got 1.5"),
        ("[upstream]\nport = true", "upstream.port in {} must be an integer, got true"),
        ('[upstream]\ntls = "yes"', 'upstream.tls in {} must be true or false, got "yes"'),
        ("[upstream]\ntls = 1", "upstream.tls in {} must be true or false, got 1"),
        ("[upstream]\nhost = 5", "upstream.host in {} must be a string (in quotes), got 5"),
        (
            "[upstream]\nhost = [1]",
            "upstream.host in {} must be a string (in quotes), got an array",
        ),
        (
            "[upstream]\nhost = 1979-05-27",
            "upstream.host in {} must be a string (in quotes), got a date",
        ),
    ],
)
def test_wrong_types(tmp_path: Path, toml: str, expected: str) -> None:
    path = tmp_path / "relay.toml"
    assert config_error(tmp_path, toml) == expected.format(path)


@pytest.mark.parametrize(
    ("toml", "start"),
    [
        ('[upstream]\nrequest_timeout = "fast"', "upstream.request_timeout in "),
        ("[upstream]\nrequest_timeout = true", "upstream.request_timeout in "),
        ('[upstream]\nrequest_timeout = "-1s"', "upstream.request_timeout in "),
        ('[spool]\nmax_bytes = "big"', "spool.max_bytes in "),
        ("[spool]\nmax_bytes = 1.5", "spool.max_bytes in "),
        ("[spool]\nmax_bytes = -1", "spool.max_bytes in "),
        ("[ingest.http]\nlisten = 8080", "ingest.http.listen in "),
    ],
)
def test_wrong_duration_size_listen_types(tmp_path: Path, toml: str, start: str) -> None:
    assert config_error(tmp_path, toml).startswith(start)


def test_long_values_are_shortened_in_messages(tmp_path: Path) -> None:
    message = config_error(tmp_path, f'[upstream]\nport = "{"x" * 500}"')
    assert len(message) < 200


def test_newlines_in_values_do_not_break_the_line(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[upstream]\nport = "a\\nb"')
    assert message.endswith('got "a\\nb"')


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("environ", "fragments"),
    [
        ({"RELAY_UPSTREAM__TRANSPORT": "grpc"}, ["upstream.transport", '"rsocket", "http"']),
        ({"RELAY_LOG__FORMAT": "xml"}, ["log.format", '"text", "json"']),
        ({"RELAY_LOG__LEVEL": "verbose"}, ["log.level", '"debug", "info", "warning", "error"']),
        ({"RELAY_SPOOL__WHEN_FULL": "drop_oldest"}, ["spool.when_full", "never dropped"]),
        ({"RELAY_UPSTREAM__MAX_IN_FLIGHT": "0"}, ["upstream.max_in_flight", "at least 1"]),
        ({"RELAY_UPSTREAM__BATCH_SIZE": "0"}, ["upstream.batch_size", "at least 1"]),
        ({"RELAY_UPSTREAM__BATCH_SIZE": "-3"}, ["upstream.batch_size", "at least 1"]),
        ({"RELAY_RETRY__MAX_REJECTIONS": "0"}, ["retry.max_rejections", "at least 1"]),
        ({"RELAY_UPSTREAM__PORT": "0"}, ["upstream.port", "1 to 65535"]),
        ({"RELAY_UPSTREAM__PORT": "65536"}, ["upstream.port", "1 to 65535"]),
        ({"RELAY_SPOOL__MAX_BYTES": "0"}, ["spool.max_bytes", "larger than 0"]),
        ({"RELAY_INGEST__HTTP__MAX_BODY_BYTES": "0"}, ["ingest.http.max_body_bytes"]),
        ({"RELAY_INGEST__MAX_EVENT_BYTES": "0"}, ["ingest.max_event_bytes"]),
        (
            {"RELAY_INGEST__MAX_EVENT_BYTES": "20MiB"},
            ["ingest.max_event_bytes", "20MiB", "ingest.http.max_body_bytes", "10MiB"],
        ),
        (
            {"RELAY_RETRY__INITIAL_BACKOFF": "1m"},
            ["retry.initial_backoff", "1m", "retry.max_backoff", "30s"],
        ),
        ({"RELAY_RETRY__INITIAL_BACKOFF": "0s"}, ["retry.initial_backoff", "longer than 0"]),
        ({"RELAY_UPSTREAM__REQUEST_TIMEOUT": "0"}, ["upstream.request_timeout", "longer than 0"]),
        (
            {"RELAY_UPSTREAM__KEEPALIVE_MAX_LIFETIME": "10s"},
            ["upstream.keepalive_max_lifetime", "upstream.keepalive_interval"],
        ),
        ({"RELAY_INGEST__HTTP__LISTEN": ""}, ["ingest.http.listen", "must not be empty"]),
        ({"RELAY_INGEST__HTTP__LISTEN": ":8080"}, ["ingest.http.listen", "no host"]),
        ({"RELAY_INGEST__SYSLOG__TCP_LISTEN": "6514"}, ["ingest.syslog.tcp_listen"]),
        ({"RELAY_INGEST__SYSLOG__UDP_LISTEN": "[::1]:99999"}, ["ingest.syslog.udp_listen"]),
        (
            {"RELAY_INGEST__JSON_LINES__TCP_LISTEN": "127.0.0.1:8080"},
            ["ingest.json_lines.tcp_listen", "ingest.http.listen", "another port"],
        ),
        ({"RELAY_SPOOL__PATH": ""}, ["spool.path", "must not be empty"]),
        (
            {"RELAY_UPSTREAM__TRANSPORT": "http", "RELAY_UPSTREAM__HTTP_URL": "ftp://x"},
            ["upstream.http_url", "https://"],
        ),
        ({"RELAY_UPSTREAM__HOST": ""}, ["upstream.host", "must not be empty"]),
        (
            {"RELAY_MASKINPORTEN__KEYSTORE": "a.p12", "RELAY_MASKINPORTEN__KEY_FILE": "k.pem"},
            ["maskinporten.key_file", "maskinporten.keystore", "not both"],
        ),
        ({"RELAY_MASKINPORTEN__CERT_FILE": "c.pem"}, ["maskinporten.cert_file", "key_file"]),
        (
            {"RELAY_MASKINPORTEN__KEYSTORE_PASSWORD_ENV": "RELAY_MP__PASSWORD"},
            ["maskinporten.keystore_password_env", '"__"'],
        ),
    ],
)
def test_validation_failures(environ: dict[str, str], fragments: list[str]) -> None:
    message = str(_env_error(environ))
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    # The first fragment is the offending key, followed by where its value came from.
    assert message.startswith(f"{fragments[0]} from environment variable RELAY_"), message


@pytest.mark.parametrize("level", ["INFO", "Warning", "debug"])
def test_log_level_is_case_insensitive_and_stored_lower_case(tmp_path: Path, level: str) -> None:
    assert load_config(None, environ={"RELAY_LOG__LEVEL": level}).log.level == level.lower()
    path = write(tmp_path, f'[log]\nlevel = "{level}"\n')
    assert load_config(path, environ={}).log.level == level.lower()


def test_validation_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[spool]\nwhen_full = "drop"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert message.startswith(f'spool.when_full in {path} must be "reject", got "drop"')
    assert "only supported policy" in message


def test_valid_edge_values() -> None:
    cfg = load_config(
        None,
        environ={
            "RELAY_UPSTREAM__PORT": "65535",
            "RELAY_INGEST__HTTP__LISTEN": "127.0.0.1:0",
            "RELAY_INGEST__SYSLOG__TCP_LISTEN": "127.0.0.1:0",
            "RELAY_INGEST__SYSLOG__UDP_LISTEN": "127.0.0.1:8080",
            "RELAY_INGEST__HTTP__MAX_EVENT_BYTES": "10MiB",
            "RELAY_RETRY__INITIAL_BACKOFF": "30s",
            "RELAY_UPSTREAM__KEEPALIVE_MAX_LIFETIME": "20s",
            "RELAY_SPOOL__DEDUP_WINDOW": "0s",
            "RELAY_UPSTREAM__TRANSPORT": "http",
            "RELAY_UPSTREAM__HOST": "",
            "RELAY_MASKINPORTEN__KEY_FILE": "k.pem",
            "RELAY_MASKINPORTEN__CERT_FILE": "c.pem",
        },
    )
    assert cfg.upstream.port == 65535
    assert cfg.ingest.http.listen == "127.0.0.1:0"


def test_validate_config_on_constructed_config() -> None:
    bad = dataclasses.replace(Config(), log=LogConfig(level="loud"))
    with pytest.raises(ConfigError, match=r"^log\.level must be one of"):
        validate_config(bad)


# --------------------------------------------------------------------------- rendering


def test_render_defaults_round_trip(tmp_path: Path) -> None:
    text = render_config(Config(), environ={})
    assert load_config(write(tmp_path, text), environ={}) == Config()


def test_render_shape() -> None:
    text = render_config(Config(), environ={})
    headers = [line for line in text.splitlines() if line.startswith("[")]
    assert headers == [
        "[ingest]",
        "[ingest.http]",
        "[ingest.syslog]",
        "[ingest.json_lines]",
        "[ingest.relp]",
        "[spool]",
        "[spool.jetstream]",
        "[upstream]",
        "[retry]",
        "[maskinporten]",
        "[log]",
        "[health]",
        "[lifecycle]",
    ]
    assert 'request_timeout = "10s"' in text
    assert 'initial_backoff = "200ms"' in text
    assert 'dedup_window = "24h"' in text
    assert 'max_body_bytes = "10MiB"' in text
    assert 'max_bytes = "1GiB"' in text
    assert "port = 7070" in text
    assert "tls = false" in text


def test_render_round_trip_non_defaults(tmp_path: Path) -> None:
    environ = {
        "RELAY_INGEST__HTTP__LISTEN": "[::1]:0",
        "RELAY_INGEST__HTTP__MAX_BODY_BYTES": "1000001",
        "RELAY_INGEST__HTTP__MAX_EVENT_BYTES": "1000",
        "RELAY_INGEST__HTTP__AUTH_TOKEN_FILE": '/run/secrets/tok "quoted" \\ ø\t\x7f',
        "RELAY_SPOOL__DEDUP_WINDOW": "1.5s",
        "RELAY_SPOOL__MAX_BYTES": "3TiB",
        "RELAY_UPSTREAM__TLS": "yes",
        "RELAY_UPSTREAM__REQUEST_TIMEOUT": "0.0001",
        "RELAY_UPSTREAM__KEEPALIVE_INTERVAL": "1h",
        "RELAY_UPSTREAM__KEEPALIVE_MAX_LIFETIME": "3d",
        "RELAY_RETRY__INITIAL_BACKOFF": "1ms",
        "RELAY_MASKINPORTEN__CLIENT_ID": "MOVE_IP_991825827",
        "RELAY_LOG__FORMAT": "json",
    }
    cfg = load_config(None, environ=environ)
    assert cfg != Config()
    text = render_config(cfg, environ={})
    assert 'keepalive_max_lifetime = "3d"' in text
    assert "max_body_bytes = 1000001" in text
    assert load_config(write(tmp_path, text), environ={}) == cfg


def test_render_example_round_trip(tmp_path: Path) -> None:
    cfg = load_config(EXAMPLE, environ={})
    assert load_config(write(tmp_path, render_config(cfg, environ={})), environ={}) == cfg


def test_render_password_env_status() -> None:
    secret = "s3cret-Password-value"
    environ = {"RELAY_KEYSTORE_PASSWORD": secret}
    cfg = load_config(None, environ=environ)
    assert cfg == Config()  # the secret is not a setting
    text = render_config(cfg, environ=environ)
    assert secret not in text
    assert 'keystore_password_env = "RELAY_KEYSTORE_PASSWORD"  # (set)' in text
    unset = render_config(cfg, environ={})
    assert 'keystore_password_env = "RELAY_KEYSTORE_PASSWORD"  # (not set)' in unset


def test_render_password_env_follows_configured_name() -> None:
    environ = {"RELAY_MASKINPORTEN__KEYSTORE_PASSWORD_ENV": "MY_P12_PASSWORD"}
    cfg = load_config(None, environ=environ)
    assert "# (not set)" in render_config(cfg, environ={"RELAY_KEYSTORE_PASSWORD": "x"})
    text = render_config(cfg, environ={"MY_P12_PASSWORD": "hunter2"})
    assert "# (set)" in text and "hunter2" not in text


def test_render_never_reads_files(tmp_path: Path) -> None:
    secret_file = tmp_path / "password.txt"
    secret_file.write_text("file-secret-value", encoding="utf-8")
    token_file = tmp_path / "token.txt"
    token_file.write_text("token-secret-value", encoding="utf-8")
    cfg = load_config(
        None,
        environ={
            "RELAY_MASKINPORTEN__KEYSTORE_PASSWORD_FILE": str(secret_file),
            "RELAY_INGEST__HTTP__AUTH_TOKEN_FILE": str(token_file),
        },
    )
    text = render_config(cfg, environ={})
    assert str(secret_file) in text
    assert "file-secret-value" not in text and "token-secret-value" not in text


def test_render_defaults_to_os_environ() -> None:
    # Only reads os.environ; the result is well-formed either way.
    text = render_config(Config())
    assert "# (set)" in text or "# (not set)" in text


# --------------------------------------------------------------------------- issue 10


def test_batch_size_above_one_needs_accepts_arrays(tmp_path: Path) -> None:
    path = write(tmp_path, "[upstream]\nbatch_size = 100\n")
    with pytest.raises(ConfigError, match=r"drops it unread") as info:
        load_config(path, environ={})
    assert "upstream.accepts_arrays = true" in str(info.value)
    ok = write(tmp_path, "[upstream]\nbatch_size = 100\naccepts_arrays = true\n")
    assert load_config(ok, environ={}).upstream.batch_size == 100


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            {"RELAY_MASKINPORTEN__TOKEN_URL": "http://mp.example.org/token"},
            "maskinporten.token_url",
        ),
        (
            {
                "RELAY_UPSTREAM__TRANSPORT": "http",
                "RELAY_UPSTREAM__HTTP_URL": "http://status.example.org/api/status",
            },
            "upstream.http_url",
        ),
    ],
)
def test_clear_text_egress_is_loud(settings: dict[str, str], expected: str) -> None:
    import logging

    from relay.config.advice import config_advice

    cfg = load_config(None, environ=settings)
    loud = [a.text for a in config_advice(cfg) if a.level >= logging.WARNING]
    assert len(loud) == 1 and expected in loud[0] and "clear text" in loud[0]


def test_loopback_egress_and_tls_are_quiet() -> None:
    from relay.config.advice import config_advice

    cfg = load_config(
        None,
        environ={
            "RELAY_MASKINPORTEN__TOKEN_URL": "http://127.0.0.1:9/token",
            "RELAY_UPSTREAM__HOST": "localhost",
        },
    )
    assert config_advice(cfg) == []
    plain = load_config(None, environ={})  # the real service's host, plain RSocket
    notes = config_advice(plain)
    assert [a.level for a in notes] == [20] and "plain RSocket" in notes[0].text


def test_a_memory_spool_is_loud_and_an_unknown_backend_is_one_line() -> None:
    import logging

    from relay.config.advice import config_advice

    cfg = load_config(None, environ={"RELAY_SPOOL__BACKEND": "memory"})
    loud = [a.text for a in config_advice(cfg, delivering=False) if a.level >= logging.WARNING]
    assert len(loud) == 1 and "NOT DURABLE" in loud[0]
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={"RELAY_SPOOL__BACKEND": "postgres"})
    assert "spool.backend" in str(err.value) and '"sqlite"' in str(err.value)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- moved settings


def deprecations(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]


def test_max_event_bytes_is_an_ingest_setting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, '[ingest]\nmax_event_bytes = "8KiB"\n')
    assert load_config(path, environ={}).ingest.max_event_bytes == 8 * KiB
    cfg = load_config(None, environ={"RELAY_INGEST__MAX_EVENT_BYTES": "16KiB"})
    assert cfg.ingest.max_event_bytes == 16 * KiB
    assert deprecations(caplog) == []
    assert 'max_event_bytes = "64KiB"' in render_config(Config()).split("[ingest.http]")[0]


@pytest.mark.parametrize(
    ("text", "environ", "named"),
    [
        ('[ingest.http]\nmax_event_bytes = "8KiB"\n', {}, "under [ingest]"),
        ("", {"RELAY_INGEST__HTTP__MAX_EVENT_BYTES": "8KiB"}, "RELAY_INGEST__MAX_EVENT_BYTES"),
    ],
    ids=["file", "environment"],
)
def test_old_max_event_bytes_still_loads_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, environ: dict, named: str
) -> None:
    cfg = load_config(write(tmp_path, text), environ=environ)
    assert cfg.ingest.max_event_bytes == 8 * KiB
    [warning] = deprecations(caplog)
    old = "RELAY_INGEST__HTTP__MAX_EVENT_BYTES" if environ else "ingest.http.max_event_bytes"
    assert old in warning and "ingest.max_event_bytes" in warning
    assert named in warning and "\n" not in warning
    assert [r.levelname for r in caplog.records if r.getMessage() == warning] == ["WARNING"]


def test_old_and_new_max_event_bytes_at_odds_are_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    both = '[ingest]\nmax_event_bytes = "8KiB"\n[ingest.http]\nmax_event_bytes = "%s"\n'
    message = config_error(tmp_path, both % "16KiB")
    assert deprecations(caplog) == []  # the error is the one line said
    assert (
        "ingest.http.max_event_bytes" in message and "keep only ingest.max_event_bytes" in message
    )
    env = {"RELAY_INGEST__HTTP__MAX_EVENT_BYTES": "1KiB", "RELAY_INGEST__MAX_EVENT_BYTES": "2KiB"}
    assert "differ" in config_error(tmp_path, None, env)
    # the same value twice is only redundant; and the environment still wins over the file
    assert load_config(write(tmp_path, both % "8192"), environ={}).ingest.max_event_bytes == 8192
    cfg = load_config(
        write(tmp_path, '[ingest.http]\nmax_event_bytes = "8KiB"\n'),
        environ={"RELAY_INGEST__MAX_EVENT_BYTES": "4KiB"},
    )
    assert cfg.ingest.max_event_bytes == 4 * KiB


def test_old_max_event_bytes_errors_name_where_it_was_written(tmp_path: Path) -> None:
    message = config_error(tmp_path, None, {"RELAY_INGEST__HTTP__MAX_EVENT_BYTES": "lots"})
    assert "ingest.max_event_bytes" in message and "RELAY_INGEST__HTTP__MAX_EVENT_BYTES" in message


def test_check_config_says_the_old_name_once(
    tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    from relay.cli import main

    path = write(tmp_path, '[ingest.http]\nmax_event_bytes = "8KiB"\n')
    assert main(["check-config", "--config", str(path)]) == 0
    assert len(deprecations(caplog)) == 1
    out = capsys.readouterr().out
    assert 'max_event_bytes = "8KiB"' in out.split("[ingest.http]")[0]
    assert "max_event_bytes" not in out.split("[ingest.http]")[1].split("\n[")[0]
