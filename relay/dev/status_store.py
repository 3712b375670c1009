"""What the status-service stand-in received, in one SQLite file.

Writes are synchronous on the event loop: each is one small WAL transaction, and the caller
acknowledges a request only after add() returns, so whoever saw the ack finds the rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

__all__ = ["StatusStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    received_at TEXT NOT NULL,
    transport TEXT NOT NULL,
    interaction TEXT NOT NULL,
    event_count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    request_id INTEGER NOT NULL REFERENCES requests(id),
    received_at TEXT NOT NULL,
    transport TEXT NOT NULL,
    interaction TEXT NOT NULL,
    client_id TEXT,
    token_jti TEXT,
    token_exp INTEGER,
    message_id TEXT,
    conversation_id TEXT,
    status TEXT,
    service_identifier TEXT,
    logger_name TEXT,
    event TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_conversation ON events(conversation_id);
CREATE INDEX IF NOT EXISTS events_message ON events(message_id, status);
"""

_RECEIVED = "received_at, transport, interaction, client_id, token_exp"
_RECENT_FEIL = 20


class StatusStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # A dev tool: losing the last commits on power loss is fine, an fsync per ack is not.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def add(
        self,
        events: list[dict],
        *,
        transport: str,
        interaction: str,
        claims: Mapping[str, Any],
    ) -> None:
        """Record one request's events in one committed transaction."""
        now = datetime.now(UTC).isoformat(timespec="microseconds")
        client_id = _text(claims.get("client_id") or claims.get("iss"))
        jti = _text(claims.get("jti"))
        exp = claims.get("exp")
        exp = exp if type(exp) is int else None
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            cur = db.execute(
                "INSERT INTO requests (received_at, transport, interaction, event_count)"
                " VALUES (?, ?, ?, ?)",
                (now, transport, interaction, len(events)),
            )
            request_id = cur.lastrowid
            db.executemany(
                "INSERT INTO events (request_id, received_at, transport, interaction, client_id,"
                " token_jti, token_exp, message_id, conversation_id, status, service_identifier,"
                " logger_name, event) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        request_id,
                        now,
                        transport,
                        interaction,
                        client_id,
                        jti,
                        exp,
                        _text(e.get("message_id")),
                        _text(e.get("conversation_id")),
                        _text(e.get("status")),
                        _text(e.get("service_identifier")),
                        _text(e.get("logger_name")),
                        orjson.dumps(e).decode(),
                    )
                    for e in events
                ],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def statuses(
        self,
        conversation_id: str | None = None,
        message_id: str | None = None,
        limit: int = 1000,
    ) -> list[dict]:
        """The newest ``limit`` matching events, oldest first, each with a ``_received`` object."""
        where, args = [], []
        if conversation_id is not None:
            where.append("conversation_id = ?")
            args.append(conversation_id)
        if message_id is not None:
            where.append("message_id = ?")
            args.append(message_id)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._db.execute(
            f"SELECT event, {_RECEIVED} FROM events {clause} ORDER BY id DESC LIMIT ?",
            (*args, max(0, limit)),
        ).fetchall()
        return [_with_received(row) for row in reversed(rows)]

    def stats(self) -> dict:
        db = self._db
        total = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        requests = db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
        by_status = dict(
            db.execute("SELECT status, COUNT(*) FROM events GROUP BY status ORDER BY status")
        )
        by_service = dict(
            db.execute(
                "SELECT service_identifier, COUNT(*) FROM events"
                " GROUP BY service_identifier ORDER BY service_identifier"
            )
        )
        # The real service keys a status by "<message_id>-<status>": extra copies overwrite.
        duplicates = db.execute(
            "SELECT COALESCE(SUM(n - 1), 0) FROM"
            " (SELECT COUNT(*) AS n FROM events GROUP BY message_id, status HAVING n > 1)"
        ).fetchone()[0]
        feil = db.execute(
            f"SELECT event, {_RECEIVED} FROM events WHERE status = 'FEIL' ORDER BY id DESC LIMIT ?",
            (_RECENT_FEIL,),
        ).fetchall()
        return {
            "total": total,
            "requests": requests,
            "by_status": by_status,
            "by_service_identifier": by_service,
            "duplicates": duplicates,
            "recent_feil": [_with_received(row) for row in reversed(feil)],
        }


def _text(value: object) -> str | None:
    return value if type(value) is str else None


def _with_received(row: tuple) -> dict:
    event = orjson.loads(row[0])
    event["_received"] = dict(zip(_RECEIVED.split(", "), row[1:], strict=True))
    return event
