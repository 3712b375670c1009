"""HTTP source: the real service's paths, so a producer can point at the relay unchanged.

A 200 is sent only after the spool has committed (and fsynced) the events of the request.
"""

from __future__ import annotations

import hmac
import logging
from pathlib import Path

import orjson
from aiohttp import hdrs, web
from multidict import CIMultiDict

from relay import event
from relay.errors import UserError
from relay.sources import body
from relay.sources.intake import Intake
from relay.spool import Incoming, Reject, SpoolRefused

log = logging.getLogger("relay.sources.http")

SOURCE = "http"
PATHS = ("/api/status", "/logging/api/status")

# The answers to a single event, made once: building them per request was a tenth of the
# handler's own time (orjson.dumps, and Response parsing its content_type argument).
_JSON_HEADERS = CIMultiDict({"Content-Type": "application/json"})
_ACCEPTED = orjson.dumps({"accepted": 1})
_DUPLICATE = orjson.dumps({"duplicates": 1})


def read_auth_token(path: str) -> str | None:
    """The producers' shared bearer token from `ingest.http.auth_token_file`, or None when unset."""
    if not path:
        return None
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UserError(
            f"cannot read ingest.http.auth_token_file {path}: {exc.strerror}; "
            "create it or leave the setting empty"
        ) from None
    if not token:
        raise UserError(f"ingest.http.auth_token_file {path} is empty; put the token in it")
    return token


class HttpSource:
    def __init__(
        self, intake: Intake, *, max_body_bytes: int, auth_token: str | None = None
    ) -> None:
        self._intake = intake
        intake.declare(SOURCE)
        self._max_body = max_body_bytes
        self._expected_auth = f"Bearer {auth_token}".encode() if auth_token else None

    def add_routes(self, app: web.Application) -> None:
        for path in PATHS:
            app.router.add_post(path, self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        if self._expected_auth is not None and not self._authorised(request):
            return web.Response(
                status=401,
                text="missing or wrong bearer token; see ingest.http.auth_token_file\n",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if request.content_length is not None and request.content_length > self._max_body:
            return _text(413, f"body is larger than ingest.http.max_body_bytes ({self._max_body})")
        try:
            data = await request.read()
            # aiohttp's istr constants: no case-folded key made per lookup
            headers = request.headers
            data = body.decompress(data, headers.get(hdrs.CONTENT_ENCODING, ""), self._max_body)
            single, items = body.split(data, headers.get(hdrs.CONTENT_TYPE, ""))
        except web.HTTPRequestEntityTooLarge:
            return _text(413, f"body is larger than ingest.http.max_body_bytes ({self._max_body})")
        except body.BodyError as exc:
            return _text(exc.status, str(exc))
        if single:
            return await self._one(items[0])
        return await self._many(items)

    def _authorised(self, request: web.Request) -> bool:
        given = request.headers.get(hdrs.AUTHORIZATION, "").encode()
        return hmac.compare_digest(given, self._expected_auth or b"")

    def _validate(self, item: body.Item) -> bytes:
        """The canonical bytes of a valid event; raises EventError."""
        if item.error is not None:
            raise event.EventError(item.error)
        return self._intake.check(item.value)

    async def _one(self, item: body.Item) -> web.Response:
        try:
            encoded = self._validate(item)
        except event.EventError as exc:
            # the real service answers a bad event with 400 and its reason as plain text
            return web.Response(status=400, text=str(exc), content_type="text/plain")
        try:
            result = await self._intake.submit(SOURCE, [Incoming(encoded, SOURCE)])
        except SpoolRefused as exc:
            return _refused(exc)
        return _json_bytes(_DUPLICATE if result.duplicates else _ACCEPTED)

    async def _many(self, items: list[body.Item]) -> web.Response:
        events: list[Incoming] = []
        rejects: list[Reject] = []
        errors: list[dict] = []
        check = self._intake.check
        add = events.append
        for index, item in enumerate(items):
            try:
                if item.error is not None:
                    raise event.EventError(item.error)
                add(Incoming(check(item.value), SOURCE))
            except event.EventError as exc:
                errors.append({"index": index, "error": str(exc)})
                rejects.append(self._intake.reject(item.raw, str(exc), SOURCE))
        try:
            result = await self._intake.submit(SOURCE, events, rejects)
        except SpoolRefused as exc:
            return _refused(exc)
        return _json(
            {
                "accepted": result.accepted,
                "duplicates": result.duplicates,
                "dead_lettered": result.dead_lettered,
                "errors": errors,
            }
        )


def _json(payload: dict) -> web.Response:
    return _json_bytes(orjson.dumps(payload))


def _json_bytes(data: bytes) -> web.Response:
    return web.Response(body=data, headers=_JSON_HEADERS)


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message + "\n", content_type="text/plain")


def _refused(exc: SpoolRefused) -> web.Response:
    return web.Response(
        status=503,
        text=f"not stored, try again later: {exc}\n",
        content_type="text/plain",
        headers={"Retry-After": str(exc.retry_after)},
    )
