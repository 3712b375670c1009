"""The jetstream backend's own settings: `[spool.jetstream]` plus what delivery implies,
handed over by the server and the CLI as a plain mapping (`relay.spool.api.open_spool`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class JetStreamOptions:
    # a URL may carry a password: never in a repr (tracebacks, test diffs)
    servers: tuple[str, ...] = field(default=("nats://127.0.0.1:4222",), repr=False)
    stream: str = "RELAY_STATUS"
    subject: str = "relay.status"
    replicas: int = 3
    consumer: str = "relay-delivery"
    credentials_file: str = ""
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    connect_timeout: float = 5.0
    # from the rest of the configuration: 2 x upstream.request_timeout, and at least
    # upstream.max_in_flight x batch_size (the relay never holds more leased than that)
    ack_wait: float = 20.0
    max_ack_pending: int = 10_000

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any] | None) -> JetStreamOptions:
        """Known keys are taken, unknown ones ignored (the config validated them already)."""
        if options is None:
            return cls()
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in options.items() if k in known}
        if "servers" in values:
            servers = values["servers"]
            values["servers"] = (servers,) if isinstance(servers, str) else tuple(servers)
        return cls(**values)

    @property
    def dlq_stream(self) -> str:
        return f"{self.stream}_DLQ"

    @property
    def invalid_stream(self) -> str:
        return f"{self.stream}_INVALID"

    @property
    def attempts_bucket(self) -> str:
        return f"{self.stream}_ATTEMPTS"

    @property
    def dlq_subject(self) -> str:
        return f"{self.subject}.dead"

    @property
    def invalid_subject(self) -> str:
        return f"{self.subject}.invalid"
