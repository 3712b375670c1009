"""`relay status`: a running relay's /status, readably."""

from __future__ import annotations

import argparse
from typing import Any

import orjson

from relay.errors import UserError


def register(sub: Any) -> None:
    status = sub.add_parser(
        "status", help="show a running relay's /status readably", description="Show /status."
    )
    status.add_argument("--url", default="http://127.0.0.1:8080", help="the relay's HTTP address")
    status.add_argument("--json", action="store_true", help="print the JSON as it is")
    status.set_defaults(func=_status)


def _status(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.request

    url = args.url.rstrip("/") + "/status"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            body = r.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"cannot read {url}: {reason}; is the relay running there?") from None
    try:
        report = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UserError(f"{url} did not answer JSON; is that a relay?") from None
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_status(report))
    return 0 if report.get("status") == "ok" else 1


def format_status(report: dict) -> str:
    lines = [f"status: {report.get('status', '?').upper()}"]
    lines += [f"  - {reason}" for reason in report.get("reasons", [])]
    for section in ("spool", "upstream", "delivery", "token", "config"):
        values = report.get(section)
        if not values:
            continue
        lines.append(f"{section}:")
        for key, value in values.items():
            if isinstance(value, dict):
                value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
            elif isinstance(value, list):
                value = ", ".join(map(str, value)) or "-"
            lines.append(f"  {key.replace('_', ' '):<26} {'-' if value is None else value}")
    return "\n".join(lines)
