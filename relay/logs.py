"""Log set-up: plain text for people, one JSON object per line for log pipelines."""

from __future__ import annotations

import logging
import sys
import time

import orjson


class JsonFormatter(logging.Formatter):
    """Stable keys: ts, level, logger, message, and exc when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER)
    handler.setFormatter(_formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # one line per request is noise at the rates a relay sees
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # rsocket-py warns about answers to requests that timed out and about its own task clean-up
    # when a connection drops; the relay logs those events itself, once, in its own words
    logging.getLogger("pyrsocket").setLevel(logging.ERROR)


def apply_logging(level: str, fmt: str) -> None:
    """A reload's [log]: the new level at once, and the new format on the relay's own handler
    (the one `setup_logging` installed; a host application's handlers are left alone)."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    for handler in root.handlers:
        if handler.get_name() == _HANDLER:
            handler.setFormatter(_formatter(fmt))


_HANDLER = "relay"


def _formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    return logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
