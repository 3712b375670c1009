"""`[spool.jetstream]`: loading (file, environment, lists), validation, masking of server
passwords, the advice, and the options handed to the backend."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from relay.config import (
    Config,
    JetStreamSpoolConfig,
    load_config,
    mask_url,
    render_config,
    spool_options,
)
from relay.config.advice import config_advice
from relay.errors import ConfigError
from relay.spool.jetstream.options import JetStreamOptions

EXAMPLE = Path(__file__).resolve().parents[2] / "relay.example.toml"
SECRET = "s3cret-Nats-pw"
JS = {"RELAY_SPOOL__BACKEND": "jetstream"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(text, encoding="utf-8")
    return path


def error(path: Path | None = None, environ: dict[str, str] | None = None) -> str:
    """The ConfigError message of loading, checked to be one line."""
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=environ or {})
    message = str(info.value)
    assert message and "\n" not in message and "\r" not in message
    return message


# --------------------------------------------------------------------------- loading


def test_defaults() -> None:
    js = Config().spool.jetstream
    assert js == JetStreamSpoolConfig(
        servers=("nats://127.0.0.1:4222",),
        stream="RELAY_STATUS",
        subject="relay.status",
        replicas=3,
        consumer="relay-delivery",
        credentials_file="",
        tls_ca_file="",
        tls_cert_file="",
        tls_key_file="",
        connect_timeout=5.0,
    )
    # the defaults are the backend's own: a config that sets nothing means the same thing
    backend = JetStreamOptions()
    for field in dataclasses.fields(JetStreamSpoolConfig):
        assert getattr(backend, field.name) == getattr(js, field.name), field.name


def test_defaults_are_valid_with_the_jetstream_backend() -> None:
    assert load_config(None, environ=JS).spool.backend == "jetstream"


def test_section_from_toml(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[spool]\nbackend = "jetstream"\nmax_bytes = "5GiB"\n\n[spool.jetstream]\n'
        'servers = ["nats://n1:4222", "tls://n2:4443", "ws://n3:80", "wss://n4"]\n'
        'stream = "EVENTS_1"\nsubject = "eformidling.status.v1"\nreplicas = 5\n'
        'consumer = "relay_main-1"\nconnect_timeout = "1500ms"\n',
    )
    js = load_config(path, environ={}).spool.jetstream
    assert js.servers == ("nats://n1:4222", "tls://n2:4443", "ws://n3:80", "wss://n4")
    assert (js.stream, js.subject, js.replicas, js.consumer) == (
        "EVENTS_1",
        "eformidling.status.v1",
        5,
        "relay_main-1",
    )
    assert js.connect_timeout == 1.5


def test_one_string_is_a_one_element_list(tmp_path: Path) -> None:
    path = write(tmp_path, '[spool.jetstream]\nservers = "nats://only:4222"\n')
    assert load_config(path, environ={}).spool.jetstream.servers == ("nats://only:4222",)


def test_servers_from_the_environment_comma_separated(tmp_path: Path) -> None:
    path = write(tmp_path, '[spool.jetstream]\nservers = ["nats://from-file:4222"]\n')
    environ = {"RELAY_SPOOL__JETSTREAM__SERVERS": " nats://a:4222 ,nats://b:4222,  tls://c:4222,"}
    cfg = load_config(path, environ=environ)
    assert cfg.spool.jetstream.servers == ("nats://a:4222", "nats://b:4222", "tls://c:4222")
    one = {"RELAY_SPOOL__JETSTREAM__SERVERS": "nats://solo:4222"}
    assert load_config(None, environ=one).spool.jetstream.servers == ("nats://solo:4222",)


def test_other_keys_from_the_environment(tmp_path: Path) -> None:
    creds = tmp_path / "relay.creds"
    creds.write_text("not read by the config", encoding="utf-8")
    environ = {
        **JS,
        "RELAY_SPOOL__JETSTREAM__STREAM": "S2",
        "RELAY_SPOOL__JETSTREAM__SUBJECT": "a.b",
        "RELAY_SPOOL__JETSTREAM__REPLICAS": "1",
        "RELAY_SPOOL__JETSTREAM__CONSUMER": "c2",
        "RELAY_SPOOL__JETSTREAM__CREDENTIALS_FILE": str(creds),
        "RELAY_SPOOL__JETSTREAM__CONNECT_TIMEOUT": "2m",
    }
    js = load_config(None, environ=environ).spool.jetstream
    assert (js.stream, js.subject, js.replicas, js.consumer) == ("S2", "a.b", 1, "c2")
    assert (js.credentials_file, js.connect_timeout) == (str(creds), 120.0)


def test_every_key_has_an_environment_name() -> None:
    for field in dataclasses.fields(JetStreamSpoolConfig):
        name = f"RELAY_SPOOL__JETSTREAM__{field.name.upper()}"
        try:
            load_config(None, environ={name: "x"})
        except ConfigError as exc:  # "x" may be a bad value, but never an unknown name
            assert "unknown" not in str(exc), name


def test_misspelt_key_suggests_the_right_one(tmp_path: Path) -> None:
    message = error(environ={"RELAY_SPOOL__JETSTREAM__SERVER": "nats://a:4222"})
    assert "did you mean spool.jetstream.servers?" in message
    message = error(write(tmp_path, "[spool.jetstream]\nreplica = 3\n"))
    assert "did you mean spool.jetstream.replicas?" in message
    message = error(write(tmp_path, "[spool.jetstrem]\nreplicas = 3\n"))
    assert "did you mean spool.jetstream?" in message


@pytest.mark.parametrize(
    ("toml", "got"),
    [
        ("servers = 4222", "got 4222"),
        ('servers = ["nats://a:4222", 4222]', "got an array holding 4222"),
        ("servers = [[1]]", "got an array holding an array"),
        ("servers = { a = 1 }", "got a table"),
    ],
)
def test_servers_must_be_strings(tmp_path: Path, toml: str, got: str) -> None:
    message = error(write(tmp_path, f"[spool.jetstream]\n{toml}\n"))
    assert message.startswith("spool.jetstream.servers in ")
    assert "must be an array of strings" in message and message.endswith(got)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("environ", "key", "expect"),
    [
        ({"SERVERS": ""}, "servers", "at least one server"),
        ({"SERVERS": " , "}, "servers", "at least one server"),
        ({"SERVERS": "http://a:4222"}, "servers", "must start with one of nats://"),
        ({"SERVERS": "a:4222"}, "servers", "must start with one of"),
        ({"SERVERS": "nats://a:4222,n1:4222"}, "servers", '"n1:4222" must start with'),
        ({"SERVERS": "nats://:4222"}, "servers", "has no host"),
        ({"SERVERS": "nats://a:99999"}, "servers", "invalid port"),
        ({"SERVERS": "nats://a:0"}, "servers", "invalid port"),
        ({"SERVERS": "nats://a:4222/x"}, "servers", "no path"),
        ({"REPLICAS": "0"}, "replicas", "from 1 to 5, got 0"),
        ({"REPLICAS": "6"}, "replicas", "from 1 to 5, got 6"),
        ({"STREAM": "RELAY STATUS"}, "stream", "letters, digits"),
        ({"STREAM": "relay.status"}, "stream", "letters, digits"),
        ({"STREAM": ""}, "stream", "letters, digits"),
        ({"STREAM": "A>"}, "stream", "letters, digits"),
        ({"CONSUMER": "a b"}, "consumer", "JetStream name"),
        ({"CONSUMER": "a.b"}, "consumer", "JetStream name"),
        ({"CONSUMER": "a*"}, "consumer", "JetStream name"),
        ({"CONSUMER": "a/b"}, "consumer", "JetStream name"),
        ({"CONSUMER": "a\\b"}, "consumer", "JetStream name"),
        ({"CONSUMER": ""}, "consumer", "JetStream name"),
        ({"SUBJECT": "relay.*"}, "subject", "no wildcards"),
        ({"SUBJECT": "relay.>"}, "subject", "no wildcards"),
        ({"SUBJECT": "relay status"}, "subject", "no spaces"),
        ({"SUBJECT": "relay..status"}, "subject", "NATS subject"),
        ({"SUBJECT": ".relay"}, "subject", "NATS subject"),
        ({"SUBJECT": ""}, "subject", "NATS subject"),
        ({"CONNECT_TIMEOUT": "0s"}, "connect_timeout", "longer than 0"),
        ({"TLS_CERT_FILE": "/c.pem"}, "tls_cert_file", "without spool.jetstream.tls_key_file"),
        ({"TLS_KEY_FILE": "/k.pem"}, "tls_key_file", "without spool.jetstream.tls_cert_file"),
    ],
)
def test_bad_values_are_one_line_naming_the_key(
    environ: dict[str, str], key: str, expect: str
) -> None:
    named = {f"RELAY_SPOOL__JETSTREAM__{k}": v for k, v in environ.items()}
    # bad values are refused whatever the backend: a typo shows before the day it is switched on
    for backend in ("sqlite", "jetstream"):
        message = error(environ={**named, "RELAY_SPOOL__BACKEND": backend})
        assert message.startswith(f"spool.jetstream.{key} from environment variable "), message
        assert expect in message, message


def test_bad_value_in_a_file_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[spool.jetstream]\nreplicas = 7\n")
    assert error(path) == (
        f"spool.jetstream.replicas in {path} must be from 1 to 5, got 7 "
        "(3 survives the loss of one server)"
    )


def test_files_must_exist_only_with_the_jetstream_backend(tmp_path: Path) -> None:
    missing = tmp_path / "no-such.creds"
    for key in ("CREDENTIALS_FILE", "TLS_CA_FILE"):
        environ = {f"RELAY_SPOOL__JETSTREAM__{key}": str(missing)}
        load_config(None, environ=environ)  # sqlite: not used, not checked
        message = error(environ={**environ, **JS})
        assert message.startswith(f"spool.jetstream.{key.lower()} from environment variable")
        assert f'"{missing}", which does not exist' in message
    message = error(environ={**JS, "RELAY_SPOOL__JETSTREAM__TLS_CA_FILE": str(tmp_path)})
    assert "which is not a file" in message


def test_mutual_tls_files_are_checked_but_never_read(tmp_path: Path) -> None:
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    cert.write_text("CERT", encoding="utf-8")
    key.write_text("PRIVATE-KEY-CONTENTS", encoding="utf-8")
    environ = {
        **JS,
        "RELAY_SPOOL__JETSTREAM__TLS_CERT_FILE": str(cert),
        "RELAY_SPOOL__JETSTREAM__TLS_KEY_FILE": str(key),
    }
    cfg = load_config(None, environ=environ)
    text = render_config(cfg, environ={})
    assert f'tls_key_file = "{key}"' in text and "PRIVATE-KEY-CONTENTS" not in text
    key.unlink()
    assert "spool.jetstream.tls_key_file" in error(environ=environ)


def test_missing_nats_py_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import relay.config.jetstream as rules

    real = rules.find_spec
    monkeypatch.setattr(rules, "find_spec", lambda name: None if name == "nats" else real(name))
    assert error(environ=JS) == (
        "spool.backend = \"jetstream\" needs nats-py: pip install 'relay[jetstream]'"
    )
    load_config(None, environ={})  # the other backends do not need it


# --------------------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        (f"nats://relay:{SECRET}@n1:4222", "nats://relay:***@n1:4222"),
        (f"tls://{SECRET}@n1:4222", "tls://***@n1:4222"),
        (f"wss://u:{SECRET}/with@at@n1", "wss://u:***@n1"),
        (f"u:{SECRET}@n1:4222", "u:***@n1:4222"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_render_masks_server_passwords_and_tokens() -> None:
    environ = {
        **JS,
        "RELAY_SPOOL__JETSTREAM__SERVERS": f"nats://relay:{SECRET}@n1:4222,tls://{SECRET}x@n2:4222",
    }
    text = render_config(load_config(None, environ=environ), environ={})
    assert SECRET not in text
    assert 'servers = ["nats://relay:***@n1:4222", "tls://***@n2:4222"]' in text


def test_errors_never_show_server_passwords(tmp_path: Path) -> None:
    for url in (
        f"http://relay:{SECRET}@n1:4222",  # wrong scheme
        f"nats://relay:{SECRET}@n1:99999",  # bad port
        f"nats://relay:{SECRET}@:4222",  # no host
        f"nats://relay:pa/{SECRET}@n1:4222",  # a "/" in the password
        f"nats//relay:{SECRET}@n1:4222",  # a typo in the scheme
        f"nats://relay:{SECRET} @n1:4222",  # a space
    ):
        message = error(environ={"RELAY_SPOOL__JETSTREAM__SERVERS": url})
        assert SECRET not in message and "spool.jetstream.servers" in message, message
        message = error(write(tmp_path, f'[spool.jetstream]\nservers = ["{url}"]\n'))
        assert SECRET not in message, message


def test_check_config_output_masks_server_passwords(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from relay.cli import main

    monkeypatch.setenv("RELAY_SPOOL__BACKEND", "jetstream")
    monkeypatch.setenv("RELAY_SPOOL__JETSTREAM__SERVERS", f"nats://relay:{SECRET}@n1:4222")
    assert main(["check-config"]) == 0
    out, err = capsys.readouterr()
    assert "nats://relay:***@n1:4222" in out
    assert SECRET not in out and SECRET not in err
    assert "sync_interval: always" in err


# --------------------------------------------------------------------------- advice


def _advice(environ: dict[str, str]) -> list[tuple[int, str]]:
    return [(a.level, a.text) for a in config_advice(load_config(None, environ=environ))]


@pytest.mark.parametrize("delivering", [True, False])
def test_jetstream_always_reminds_of_sync_interval(delivering: bool) -> None:
    cfg = load_config(None, environ={**JS, "RELAY_UPSTREAM__HOST": "localhost"})
    advice = config_advice(cfg, delivering=delivering)
    assert [a.level for a in advice] == [logging.INFO]
    assert "jetstream { sync_interval: always }" in advice[0].text
    assert "deploy/nats/" in advice[0].text and "\n" not in advice[0].text
    assert not any("sync_interval" in text for _, text in _advice({}))


@pytest.mark.parametrize(("replicas", "words"), [("1", "loses acknowledged"), ("2", "stops")])
def test_fewer_than_three_replicas_is_loud(replicas: str, words: str) -> None:
    environ = {**JS, "RELAY_SPOOL__JETSTREAM__REPLICAS": replicas}
    loud = [text for level, text in _advice(environ) if level >= logging.WARNING]
    assert len(loud) == 1 and "\n" not in loud[0]
    assert f"spool.jetstream.replicas is {replicas}" in loud[0] and words in loud[0]
    for quiet in ("3", "5"):
        environ = {**JS, "RELAY_SPOOL__JETSTREAM__REPLICAS": quiet}
        assert not any("replicas" in text for _, text in _advice(environ))
    # with another backend the section is not used, so its replicas are nobody's risk
    assert not any("replicas" in t for _, t in _advice({"RELAY_SPOOL__JETSTREAM__REPLICAS": "1"}))


# --------------------------------------------------------------------------- the backend's options


def test_spool_options_only_for_jetstream() -> None:
    assert spool_options(Config()) is None
    assert spool_options(load_config(None, environ={"RELAY_SPOOL__BACKEND": "memory"})) is None


def test_spool_options_are_the_backends_fields(tmp_path: Path) -> None:
    environ = {
        **JS,
        "RELAY_SPOOL__JETSTREAM__SERVERS": "nats://a:4222,nats://b:4222",
        "RELAY_SPOOL__JETSTREAM__REPLICAS": "5",
        "RELAY_SPOOL__JETSTREAM__CONNECT_TIMEOUT": "250ms",
        "RELAY_UPSTREAM__REQUEST_TIMEOUT": "7s",
    }
    options = spool_options(load_config(None, environ=environ))
    assert options == {
        "servers": ["nats://a:4222", "nats://b:4222"],
        "stream": "RELAY_STATUS",
        "subject": "relay.status",
        "replicas": 5,
        "consumer": "relay-delivery",
        "credentials_file": "",
        "tls_ca_file": "",
        "tls_cert_file": "",
        "tls_key_file": "",
        "connect_timeout": 0.25,
        "ack_wait": 14.0,
        "max_ack_pending": 10_000,
    }
    assert set(options) == {f.name for f in dataclasses.fields(JetStreamOptions)}
    backend = JetStreamOptions.from_mapping(options)
    assert backend.servers == ("nats://a:4222", "nats://b:4222")
    assert (backend.ack_wait, backend.connect_timeout) == (14.0, 0.25)


def test_max_ack_pending_covers_what_delivery_holds() -> None:
    environ = {
        **JS,
        "RELAY_UPSTREAM__MAX_IN_FLIGHT": "512",
        "RELAY_UPSTREAM__BATCH_SIZE": "100",
        "RELAY_UPSTREAM__ACCEPTS_ARRAYS": "true",
    }
    assert spool_options(load_config(None, environ=environ))["max_ack_pending"] == 51_200


def test_example_file_documents_the_section() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    assert "[spool.jetstream]" in text
    for field in dataclasses.fields(JetStreamSpoolConfig):
        assert f"\n{field.name} = " in text, field.name
    assert 'RELAY_SPOOL__JETSTREAM__SERVERS="nats://' in text


def test_repr_leaves_server_urls_out() -> None:
    # a repr ends up in tracebacks and in pytest's diffs of two configurations
    environ = {"RELAY_SPOOL__JETSTREAM__SERVERS": f"nats://relay:{SECRET}@n1:4222"}
    cfg = load_config(None, environ=environ)
    assert SECRET not in repr(cfg) and "stream='RELAY_STATUS'" in repr(cfg)
