"""JSON-lines source: one JSON object per line over TCP, as Logstash TCP appenders send them.

This is what the integrasjonspunkt's logstash-logback-encoder appender writes (status events as
lines with ``"logger_name": "STATUS"``), and what Fluent Bit or Vector send in json_lines mode.
The appender ships every log line of the application, so a line whose `logger_name` is another
logger is an ordinary log line: not stored, not dead-lettered, only counted
(``relay_skipped_lines_total{source="json_lines",reason="not_status"}``). A line without
`logger_name` is taken as a status event. The Logstash fields (``@version``, ``level``,
``thread_name``, ``message``, ``appname``, ``HOSTNAME``, …) pass through unchanged.

Framing, limits, durability and back-pressure are those of the syslog TCP listener (see
`relay.sources.tcp`), with lines delimited by LF only.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import orjson

from relay.config import JsonLinesIngestConfig
from relay.event import STATUS_LOGGER, other_logger
from relay.sources.intake import Intake
from relay.sources.syslog_framing import Frame
from relay.sources.tcp import Convert, Item, TcpIngest
from relay.sources.tls import ListenerTLS

__all__ = ["LINE_ALLOWANCE", "SOURCE", "JsonLinesSource", "start_json_lines"]

log = logging.getLogger("relay.sources.json_lines")

SOURCE = "json_lines"
# A Logstash line is the event plus a few hundred bytes of fields around it.
LINE_ALLOWANCE = 8 * 1024

# Only for lines too long to decode: their kept head still tells a stack trace of another logger
# (logstash-logback-encoder writes logger_name near the start) from an oversized status event.
_LOGGER_NAME = re.compile(rb'"logger_name"\s*:\s*"((?:[^"\\]|\\.)*)"')


def json_lines_converter(intake: Intake) -> Convert:
    """Turn one line into an event, a dead letter with its raw text, or None (not a status)."""
    skipped = intake.counters.skipped
    not_status = (SOURCE, "not_status")
    skipped[not_status] += 0  # shown at zero from the start

    def convert(frame: Frame) -> Item | None:
        if frame.problem is not None:
            m = _LOGGER_NAME.search(frame.data)
            if m is not None and m[1] != STATUS_LOGGER.encode():
                skipped[not_status] += 1
                return None
            return intake.reject(frame.evidence, frame.problem, SOURCE, frame.reason)
        try:
            value = orjson.loads(frame.data)
        except orjson.JSONDecodeError as exc:
            return intake.reject(frame.data, f"line is not valid JSON: {exc.msg}", SOURCE)
        # a non-string logger_name is no logback line: validation dead-letters it
        if other_logger(value) is not None:
            skipped[not_status] += 1
            return None
        return intake.item(value, frame.data, SOURCE)

    return convert


@dataclass
class JsonLinesSource:
    """The running JSON-lines listener, or None when off."""

    tcp: TcpIngest | None

    @property
    def port(self) -> int | None:
        return self.tcp.port if self.tcp is not None else None

    async def close(self) -> None:
        """Stop listening; return once what was read is stored (or its loss logged)."""
        if self.tcp is not None:
            await self.tcp.close()


async def start_json_lines(
    cfg: JsonLinesIngestConfig, intake: Intake, tls: ListenerTLS | None = None
) -> JsonLinesSource:
    """Start the listener when `cfg.tcp_listen` is set, with `tls` when given; raises UserError
    when it cannot listen."""
    if not cfg.tcp_listen:
        return JsonLinesSource(None)
    tcp = TcpIngest(
        intake,
        source=SOURCE,
        setting="ingest.json_lines.tcp_listen",
        max_frame=intake.max_event_bytes + LINE_ALLOWANCE,
        convert=json_lines_converter(intake),
        octet_counting=False,
        max_connections=cfg.max_connections,
    )
    await tcp.start(cfg.tcp_listen, tls.context if tls is not None else None)
    kind = f"tcp+{tls.describe()}" if tls is not None else "tcp"
    log.info("json_lines: listening on %s %s", kind, tcp.address)
    return JsonLinesSource(tcp)
