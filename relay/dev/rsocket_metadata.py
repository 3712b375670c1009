"""The per-request composite metadata of RSocket, read as the status service reads it.

Only two entries matter to the service: the route (``log-fire``) and the bearer token; other
entries are skipped. A request whose metadata cannot be read at all is refused by the caller
(status_rsocket) with the text of MetadataError.
"""

from __future__ import annotations

__all__ = ["MetadataError", "parse_metadata"]

_ROUTING_ID = 0x7E
_AUTH_ID = 0x7C
_ROUTING_MIME = "message/x.rsocket.routing.v0"
_AUTH_MIME = "message/x.rsocket.authentication.v0"
_LEGACY_BEARER_MIME = "message/x.rsocket.authentication.bearer.v0"
_BEARER_ID = 0x01
_SIMPLE_ID = 0x00


class MetadataError(ValueError):
    """Per-request composite metadata that cannot be read."""


def parse_metadata(metadata: bytes | None) -> tuple[list[str], str | None]:
    """(routing tags, bearer token or None) from composite metadata.

    The token is accepted in the three forms Spring's server accepts: the authentication
    extension with its MIME as well-known id 0x7C or as the full string, and the legacy
    ``message/x.rsocket.authentication.bearer.v0`` entry holding the raw token.
    """
    tags: list[str] = []
    token: str | None = None
    buf = metadata or b""
    offset = 0
    while offset < len(buf):
        first = buf[offset]
        offset += 1
        if first & 0x80:
            mime: int | str = first & 0x7F
        else:
            end = offset + first + 1  # a MIME string's length is stored minus one
            mime = _ascii(buf[offset:end], end <= len(buf), "MIME type")
            offset = end
        if offset + 3 > len(buf):
            raise MetadataError("truncated entry length")
        length = int.from_bytes(buf[offset : offset + 3], "big")
        offset += 3
        if offset + length > len(buf):
            raise MetadataError("entry longer than the metadata")
        entry = buf[offset : offset + length]
        offset += length
        if mime in (_ROUTING_ID, _ROUTING_MIME):
            tags.extend(_routing_tags(entry))
        elif mime in (_AUTH_ID, _AUTH_MIME):
            token = _auth_extension_token(entry)
        elif mime == _LEGACY_BEARER_MIME:
            token = _utf8(entry, "bearer token")
    return tags, token


def _ascii(raw: bytes, complete: bool, what: str) -> str:
    if not complete:
        raise MetadataError(f"truncated {what}")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise MetadataError(f"{what} is not ASCII") from None


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MetadataError(f"{what} is not UTF-8") from None


def _routing_tags(entry: bytes) -> list[str]:
    tags, offset = [], 0
    while offset < len(entry):
        end = offset + 1 + entry[offset]
        if end > len(entry):
            raise MetadataError("truncated routing tag")
        tags.append(_utf8(entry[offset + 1 : end], "routing tag"))
        offset = end
    return tags


def _auth_extension_token(entry: bytes) -> str:
    if not entry:
        raise MetadataError("empty authentication entry")
    first = entry[0]
    if first & 0x80:
        auth_id = first & 0x7F
        if auth_id != _BEARER_ID:
            name = "simple" if auth_id == _SIMPLE_ID else f"id {auth_id:#x}"
            raise MetadataError(f"authentication type {name} is not supported; use bearer")
        return _utf8(entry[1:], "bearer token")
    end = 1 + first + 1
    auth_type = _ascii(entry[1:end], end <= len(entry), "authentication type")
    if auth_type != "bearer":
        raise MetadataError(f"authentication type {auth_type} is not supported; use bearer")
    return _utf8(entry[end:], "bearer token")
