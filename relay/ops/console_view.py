"""The console's live part as HTML: status, queue, upstream, charts and dead letters.

Built here, swapped into `page.html` (first load) or fetched alone by console.js every few
seconds (`/console/fragment`). Every value that comes from outside — dead letters hold whatever
a producer or the upstream sent, errors quote it — goes through `html.escape` (`_e`), and long
texts are cut, so a hostile dead letter can neither inject markup nor make the page huge.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from relay.ops.console_svg import chart
from relay.ops.samples import Sampler
from relay.spool import DeadLetterRecord

__all__ = ["Access", "Letters", "live_html"]

MAX_ERROR = 300  # characters of an error shown per dead letter
MAX_EVENT = 600  # characters of the stored event shown per dead letter
EVENTS_HIDDEN = {
    "token": "The events themselves are shown here once the token of "
    "ingest.http.auth_token_file is typed below.",
    "other": "The events themselves are shown only to this machine, on a listener bound to "
    "loopback; elsewhere set ingest.http.auth_token_file and type its token here.",
}


@dataclass(frozen=True, slots=True)
class Access:
    """Whether this request may use the dead-letter actions, and how: "token" (the page asks for
    the ingest token), "loopback" (no token configured, listener and peer on loopback), or "off"
    (with `why`)."""

    mode: str
    why: str = ""

    @property
    def allowed(self) -> bool:
        return self.mode != "off"


@dataclass(frozen=True, slots=True)
class Letters:
    """Dead letters as listed for the page: the first ones, how many there are, or why the list
    could not be read."""

    records: Sequence[DeadLetterRecord]
    total: int
    error: str | None = None


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _cut(text: str | None, limit: int) -> str:
    if not text:
        return ""
    return text if len(text) <= limit else text[:limit] + f"… ({len(text) - limit} more)"


def when(at: float | None) -> str:
    if at is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = abs(seconds)
    if s < 120:
        text = f"{s:.0f} s"
    elif s < 7200:
        text = f"{s // 60:.0f} min"
    elif s < 172800:
        text = f"{s // 3600:.0f} h {(s % 3600) // 60:.0f} min"
    else:
        text = f"{s / 86400:.0f} d"
    return f"-{text}" if seconds < 0 else text


def size(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _tile(label: str, value: str, ident: str = "", extra: str = "") -> str:
    attr = f' id="{ident}"' if ident else ""
    note = f'<span class="note">{extra}</span>' if extra else ""
    return f'<div class="tile"><span class="label">{label}</span><b{attr}>{value}</b>{note}</div>'


def _status(report: dict[str, Any]) -> str:
    state = "ok" if report["status"] == "ok" else "degraded"
    reasons = "".join(f"<li>{_e(r)}</li>" for r in report["reasons"])
    listed = f'<ul class="reasons">{reasons}</ul>' if reasons else ""
    return (
        f'<section class="card" id="status"><h2>Status <span class="badge {state}" '
        f'id="state">{state}</span></h2>{listed}<p class="small">version {_e(report["version"])}'
        f", up {duration(report['uptime_seconds'])}</p></section>"
    )


def _queue(report: dict[str, Any]) -> str:
    spool = report["spool"]
    capacity = spool["capacity_bytes"] or 1
    delivered = report.get("delivery", {}).get("delivered")
    tiles = [
        _tile("queue depth", f"{spool['events']}", "depth", "events waiting"),
        _tile(
            "queued bytes",
            size(spool["bytes"]),
            "bytes",
            f"{100 * spool['bytes'] / capacity:.1f}% of {size(spool['capacity_bytes'])}",
        ),
        _tile("oldest event", duration(spool["oldest_event_age_seconds"]), "oldest", "age"),
        _tile("dead letters", f"{spool['dead_letters']}", "dead-count"),
        _tile(
            "delivered", "—" if delivered is None else str(delivered), "delivered", "since start"
        ),
    ]
    return (
        '<section class="card" id="queue"><h2>Queue</h2>'
        f'<div class="tiles">{"".join(tiles)}</div></section>'
    )


def _upstream(
    report: dict[str, Any], connected_since: float | None, cert_expiry: float | None, now: float
) -> str:
    up = report.get("upstream")
    if up is None:
        return (
            '<section class="card" id="upstream"><h2>Upstream</h2>'
            "<p>Delivery is off: no Maskinporten credentials are configured.</p></section>"
        )
    if up["connected"]:
        state = '<span class="badge ok" id="connected">connected</span>'
        since = f"since {when(connected_since)}" if connected_since else ""
    else:
        state = '<span class="badge degraded" id="connected">not connected</span>'
        down = up.get("unreachable_seconds")
        since = f"unreachable for {duration(down)}" if down is not None else ""
    token = report["token"]
    expires = token["expires_in_seconds"]
    if expires is None:
        token_text = "no token yet"
    elif expires <= 0:
        token_text = "expired"
    else:
        token_text = f"expires in {duration(expires)}"
    if token["last_error"]:
        token_text += f" — last error: {_e(_cut(token['last_error'], MAX_ERROR))}"
    if cert_expiry is None:
        cert_text = "— (a key id, no certificate)"
    else:
        days = (cert_expiry - now) / 86400
        cert_text = f"{when(cert_expiry)} ({days:.0f} days)"
        if days < 30:
            cert_text = f'<span class="warn">{cert_text}</span>'
    proxy = f"<dt>proxy</dt><dd>{_e(up['proxy'])}</dd>" if up.get("proxy") else ""
    return (
        '<section class="card" id="upstream"><h2>Upstream</h2><dl class="facts">'
        f"<dt>address</dt><dd>{_e(up['address'])} ({_e(up['transport'])})</dd>{proxy}"
        f"<dt>connection</dt><dd>{state} {since}</dd>"
        f'<dt>token</dt><dd id="token-expiry">{token_text}</dd>'
        f'<dt>certificate</dt><dd id="cert-expiry">{cert_text}</dd>'
        "</dl></section>"
    )


def _charts(sampler: Sampler, now: float, depth: int) -> str:
    window = sampler.every * (sampler.samples.maxlen or 1)
    figures = [
        # ends with the depth of this moment, between two samples
        ("Queue depth (events)", [*sampler.series("depth"), (now, float(depth))], ""),
        ("Delivered per minute", sampler.rates("delivered"), "/min"),
        ("Ingested per minute", sampler.rates("ingested"), "/min"),
        ("Refused at ingest per minute", sampler.rates("refused"), "/min"),
    ]
    body = "".join(
        f"<figure>{chart(title, points, now, window, unit)}<figcaption>{_e(title)}"
        "</figcaption></figure>"
        for title, points, unit in figures
    )
    return (
        '<section class="card" id="charts"><h2>Last hour</h2>'
        f'<div class="charts">{body}</div></section>'
    )


def _letter(r: DeadLetterRecord, access: Access, show_events: bool) -> str:
    disabled = "" if access.allowed else " disabled"
    event = r.body.decode("utf-8", "replace")
    error = r.last_error or r.first_error or ""
    shown = f"<pre>{_e(_cut(event, MAX_EVENT))}</pre>" if show_events else ""
    return (
        f'<article class="letter" data-id="{r.id}"><header><b>#{r.id}</b> '
        f'<span class="reason">{_e(r.reason)}</span> from <span class="source">{_e(r.source)}'
        f"</span>, {r.attempts} attempt(s), dead since {when(r.dead_at)}</header>"
        f'<p class="error">{_e(_cut(error, MAX_ERROR))}</p>'
        f"{shown}"
        f'<button type="button" class="replay" data-id="{r.id}"{disabled}>Replay #{r.id}'
        "</button></article>"
    )


def _dead_letters(letters: Letters, access: Access, show_events: bool) -> str:
    if letters.error:
        body = f'<p class="warn">{_e(letters.error)}</p>'
    elif not letters.records:
        body = '<p id="no-dead-letters">No dead letters.</p>'
    else:
        rest = letters.total - len(letters.records)
        more = (
            f'<p class="small">{rest} more not shown: <code>relay dlq list</code> lists them '
            "all.</p>"
            if rest > 0
            else ""
        )
        note = _hidden_note(access)
        hidden = "" if show_events else f'<p class="small" id="events-hidden">{note}</p>'
        body = hidden + "".join(_letter(r, access, show_events) for r in letters.records) + more
    why = "" if access.allowed else f'<p class="small" id="actions-off">{_e(access.why)}</p>'
    return (
        f'<section class="card" id="dead-letters"><h2>Dead letters ({letters.total})</h2>'
        f"{why}{body}</section>"
    )


def live_html(
    report: dict[str, Any],
    sampler: Sampler,
    letters: Letters,
    access: Access,
    cert_expiry: float | None,
    now: float,
    show_events: bool = True,
) -> str:
    """The part of the page that refreshes. `show_events`: with the stored events of the dead
    letters (producers' data; errors, reasons and times are always shown)."""
    return "".join(
        (
            _status(report),
            _queue(report),
            _upstream(report, sampler.connected_since, cert_expiry, now),
            _charts(sampler, now, report["spool"]["events"]),
            _dead_letters(letters, access, show_events),
        )
    )


def _hidden_note(access: Access) -> str:
    return EVENTS_HIDDEN["token" if access.mode == "token" else "other"]
