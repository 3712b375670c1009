"""The access token for one upstream request, as both sinks take it."""

from __future__ import annotations

import asyncio
from typing import Protocol


class TokenSource(Protocol):
    async def token(self) -> str: ...

    def current(self) -> str | None: ...

    def invalidate(self, token: str) -> None: ...

    # optional: `confirmed(token)`, told once the upstream accepts a token after refusing one


NO_TOKEN = "no valid access token (see relay.auth logs)"


async def bearer(tokens: TokenSource, timeout: float) -> str | None:
    """The valid token; waits up to `timeout` for a fetch when there is none (then None)."""
    token = tokens.current()  # the common case: no await, no timer
    if token is not None:
        return token
    try:
        async with asyncio.timeout(timeout):
            return await tokens.token()
    except TimeoutError:
        return None
