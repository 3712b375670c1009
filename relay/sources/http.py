"""HTTP source: the real service's paths, so a producer can point at the relay unchanged.

A 200 is sent only after the spool has committed (and fsynced) the events of the request.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiohttp import hdrs, web
from multidict import CIMultiDict

from relay import event
from relay.errors import UserError
from relay.sources import body
from relay.sources.intake import Intake
from relay.spool import NOT_KEPT, Incoming, Reject, SpoolRefused

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


# Bodies up to this size are parsed and checked on the event loop (about 1 ms of work; a
# thread hop would cost the single-event path a fifth of its rate). Larger or compressed
# bodies go to a thread, so that a 10 MiB body does not stop /healthz and other requests.
INLINE_BYTES = 64 * 1024
# An answer lists this many item errors at most, then says how many it left out.
MAX_ERRORS = 100


@dataclass(slots=True)
class _Checked:
    """A body decoded and validated, ready to store."""

    single: bool
    events: list[Incoming]
    rejects: list[Reject] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    errors_omitted: int = 0
    invalid: str | None = None  # why the single event was refused


class HttpSource:
    def __init__(
        self,
        intake: Intake,
        *,
        max_body_bytes: int,
        auth_token: str | None = None,
        max_items: int = body.DEFAULT_MAX_ITEMS,
        read_timeout: float = 30.0,
    ) -> None:
        self._intake = intake
        intake.declare(SOURCE)
        self._max_body = max_body_bytes
        self._max_items = max_items
        self._read_timeout = read_timeout
        self._parsing = asyncio.Semaphore(2)
        self._expected_auth = f"Bearer {auth_token}".encode() if auth_token else None

    def set_auth_token(self, auth_token: str | None) -> None:
        """A reload's token: requests from now on are checked against it (None: no check)."""
        self._expected_auth = f"Bearer {auth_token}".encode() if auth_token else None

    @property
    def token_required(self) -> bool:
        """Whether `ingest.http.auth_token_file` is in force (the console asks for it too)."""
        return self._expected_auth is not None

    def authorised(self, request: web.Request) -> bool:
        """The request carries the current bearer token (False when none is configured)."""
        return self._expected_auth is not None and self._authorised(request)

    def add_routes(self, app: web.Application) -> None:
        for path in PATHS:
            app.router.add_post(path, self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self._expected_auth is not None and not self._authorised(request):
            return web.Response(
                status=401,
                text="missing or wrong bearer token; see ingest.http.auth_token_file\n",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if request.content_length is not None and request.content_length > self._max_body:
            return _text(413, f"body is larger than ingest.http.max_body_bytes ({self._max_body})")
        try:
            data = await self._read(request)
        except web.HTTPRequestEntityTooLarge:
            return _text(413, f"body is larger than ingest.http.max_body_bytes ({self._max_body})")
        except TimeoutError:
            return await self._too_slow(request)
        # aiohttp's istr constants: no case-folded key made per lookup
        headers = request.headers
        encoding = headers.get(hdrs.CONTENT_ENCODING, "")
        try:
            if len(data) > INLINE_BYTES or encoding:
                # two at a time: the GIL gives no speed to more threads, and each one holds an
                # inflated body and its decoded items
                async with self._parsing:
                    checked = await asyncio.to_thread(
                        self._check_body, data, encoding, headers.get(hdrs.CONTENT_TYPE, "")
                    )
                return await self._store(checked)
            single, items = body.split(data, headers.get(hdrs.CONTENT_TYPE, ""), self._max_items)
        except body.BodyError as exc:
            return _text(exc.status, str(exc))
        if single:
            return await self._one(items[0])
        return await self._store(self._check_many(data, items))

    async def _read(self, request: web.Request) -> bytes:
        if request.content.is_eof():
            return await request.read()  # all here already (most requests): no timer to set
        # bounds how long a slow or stalled client holds a connection and its buffer
        async with asyncio.timeout(self._read_timeout):
            return await request.read()

    async def _too_slow(self, request: web.Request) -> web.StreamResponse:
        resp = _text(
            408,
            f"body did not arrive within ingest.http.read_timeout ({self._read_timeout:g} s); "
            "nothing was stored: send the whole request at once",
        )
        resp.force_close()
        try:
            await resp.prepare(request)
            await resp.write_eof()
        except ConnectionError:
            pass  # the client left first: nothing to tell it
        # close now: aiohttp would otherwise linger, reading the rest of the body for seconds
        request.protocol.force_close()
        return resp

    def _authorised(self, request: web.Request) -> bool:
        try:
            # aiohttp decodes header bytes that are not UTF-8 to lone surrogates: not our token
            given = request.headers.get(hdrs.AUTHORIZATION, "").encode()
        except UnicodeEncodeError:
            return False
        return hmac.compare_digest(given, self._expected_auth or b"")

    def _check_body(self, data: bytes, encoding: str, content_type: str) -> _Checked:
        """Decode and validate a body; pure work with no shared state, so it runs in a thread."""
        data = body.decompress(data, encoding, self._max_body)
        single, items = body.split(data, content_type, self._max_items)
        if not single:
            return self._check_many(data, items)
        try:
            return _Checked(True, [Incoming(self._validate(items[0]), SOURCE)])
        except event.EventError as exc:
            return _Checked(True, [], invalid=str(exc))

    def _validate(self, item: body.Item) -> bytes:
        """The canonical bytes of a valid event; raises EventError."""
        if item.error is not None:
            raise event.EventError(item.error)
        return self._intake.check(item.value)

    async def _one(self, item: body.Item) -> web.Response:
        try:
            encoded = self._validate(item)
        except event.EventError as exc:
            return _invalid(str(exc))
        try:
            result = await self._intake.submit(SOURCE, [Incoming(encoded, SOURCE)])
        except SpoolRefused as exc:
            return _refused(exc)
        return _json_bytes(_DUPLICATE if result.duplicates else _ACCEPTED)

    def _check_many(self, data: bytes, items: list[body.Item]) -> _Checked:
        checked = _Checked(False, [])
        errors = checked.errors
        check = self._intake.check
        add = checked.events.append
        for index, item in enumerate(items):
            try:
                if item.error is not None:
                    raise event.EventError(item.error)
                add(Incoming(check(item.value), SOURCE))
            except event.EventError as exc:
                if item.raw is None:
                    body.fill_raw(data, items)  # the bytes sent, for the dead letter
                message = str(exc)
                if len(errors) < MAX_ERRORS:
                    errors.append({"index": index, "error": message})
                else:
                    checked.errors_omitted += 1
                checked.rejects.append(self._intake.reject(item.raw or b"", message, SOURCE))
        return checked

    async def _store(self, checked: _Checked) -> web.Response:
        if checked.invalid is not None:
            return _invalid(checked.invalid)
        try:
            result = await self._intake.submit(SOURCE, checked.events, checked.rejects)
        except SpoolRefused as exc:
            return _refused(exc)
        if checked.single:
            return _json_bytes(_DUPLICATE if result.duplicates else _ACCEPTED)
        answer = {
            "accepted": result.accepted,
            "duplicates": result.duplicates,
            "dead_lettered": result.dead_lettered,
            "errors": checked.errors,
        }
        if checked.errors_omitted:
            answer["errors_omitted"] = checked.errors_omitted
        if result.not_kept:
            # the invalid items past the share are reported, not kept: say so, not "dead_lettered"
            answer["not_kept"] = result.not_kept
            answer["not_kept_reason"] = NOT_KEPT
        return _json(answer)


def _invalid(message: str) -> web.Response:
    # the real service answers a bad event with 400 and its reason as plain text
    return web.Response(status=400, text=message, content_type="text/plain")


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
