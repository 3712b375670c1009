"""A stand-in for eFormidling's status service: real sockets, real checks, a SQLite record.

It answers like the service documented in shared/reference/upstream-protocol.md (RSocket route
``log-fire`` and ``POST /api/status``), stores what it accepted so tests and demos can look,
and has fault switches (relay.dev.faults) to play an unhealthy upstream.

The transports (status_rsocket, status_http) share the rules here and only translate
outcomes: TokenRefused (a PermissionError) carries Spring Security's text for the token,
ValueError means "the request is refused" and carries the text to send back. Over RSocket
what the service cannot use is acknowledged and counted as ``dropped`` (see receive).
The transports import this module, never the other way round: which of them run, and on
which ports, is decided in relay.dev.upstream (as uvicorn's server.py picks its protocols).
Each running transport registers itself in ``listeners`` so that stats() can report its
counters without knowing what it is.

A sender uses one token for many requests, so each distinct token is verified once
(signature verification was over half the stand-in's CPU) and afterwards only its expiry is
checked (60 s clock skew, as the service allows).
In ack-only mode (for benchmarks) accepted requests are validated and counted, not stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from relay.dev import status_tokens
from relay.dev.faults import StatusFaults
from relay.dev.status_store import StatusStore
from relay.dev.status_tokens import ACCESS_DENIED, FAILED_TO_VALIDATE, TokenRefused
from relay.event import EventError, decode, normalise

__all__ = ["DropCounter", "Listener", "StatusServiceStandIn", "VerifyToken"]

VerifyToken = Callable[[str], Mapping[str, Any]]

# Senders hold one token at a time, renewed before it expires: a few entries cover them all.
_VERIFIED_TOKENS = 8
# refuse_first_tokens remembers this many tokens' fates; beyond it a token is judged afresh.
_REMEMBERED_TOKENS = 4096


class Listener(Protocol):
    """A running transport of the service, as stats() sees it."""

    def counters(self) -> dict[str, int]: ...


class StatusServiceStandIn:
    def __init__(
        self,
        *,
        store_path: Path,
        verify_token: VerifyToken,
        faults: StatusFaults | None = None,
        scope: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.faults = faults if faults is not None else StatusFaults()
        self.store = StatusStore(store_path)
        # by transport name ("rsocket", "http"); filled by the transports as they start
        self.listeners: dict[str, Listener] = {}
        self.acked = AckCounter(clock)
        self.dropped = DropCounter()
        self._first_tokens: dict[str, bool] = {}
        self._token_epoch = self.faults.token_epoch
        self._verify_token = verify_token
        self._verified: dict[str, Mapping[str, Any]] = {}
        self._clock = clock
        self._scope = scope

    # -- the rules shared by both transports --------------------------------------------

    def authorise(self, token: str | None) -> Mapping[str, Any]:
        """The token's claims; TokenRefused (a PermissionError) with Spring's text if refused."""
        if not token:
            raise TokenRefused(ACCESS_DENIED)
        now = self._clock()
        claims = self._verified.get(token)
        if claims is None:
            claims = self._verify(token, now)
        else:
            status_tokens.check_expiry(claims, now)
        if self._scope is not None:
            scope = claims.get("scope")
            granted = scope.split() if isinstance(scope, str) else []
            if self._scope not in granted:
                # What a Spring authorisation rule (hasAuthority) answers; the public service
                # has no such rule, so dev-upstream does not ask for a scope.
                raise TokenRefused(ACCESS_DENIED)
        self._token_faults(token)
        return claims

    def _verify(self, token: str, now: float) -> Mapping[str, Any]:
        try:
            claims = self._verify_token(token)
        except Exception as err:
            # verify_token may raise anything; the answer is worded from the token itself.
            raise TokenRefused(status_tokens.refusal_text(token, err, now)) from None
        status_tokens.check_expiry(claims, now)
        exp = claims.get("exp")
        # Without a numeric exp there is no way to tell when to verify again: never cached.
        if type(exp) in (int, float):
            if len(self._verified) >= _VERIFIED_TOKENS:
                del self._verified[next(iter(self._verified))]  # the oldest
            self._verified[token] = claims
        return claims

    def _token_faults(self, token: str) -> None:
        faults = self.faults
        if faults.refuse_tokens_text:
            raise TokenRefused(faults.refuse_tokens_text)
        if faults.token_epoch != self._token_epoch:
            self._token_epoch = faults.token_epoch
            self._first_tokens.clear()
        if not faults.refuse_first_tokens:
            return
        seen = self._first_tokens
        refused = seen.get(token)
        if refused is None:
            refused = sum(seen.values()) < faults.refuse_first_tokens
            if len(seen) < _REMEMBERED_TOKENS:
                seen[token] = refused
        if refused:
            raise TokenRefused(FAILED_TO_VALIDATE)

    def receive(
        self,
        data: bytes | None,
        *,
        claims: Mapping[str, Any],
        transport: str,
        interaction: str,
    ) -> int:
        """Take one authorised request's data; return the number of events stored.

        Over RSocket the real service acknowledges before it decodes: what it cannot use (an
        array, bad JSON, no or another logger_name) is acknowledged and dropped, so here it is
        counted in ``dropped`` and answered like anything else. Over HTTP the data is bound
        first: a ValueError (relay.event.EventError is one) carries the text to answer with.
        Reject faults raise ValueError(reject_message) on either transport.
        """
        unpack = self._usable_events if transport == "rsocket" else self._bound_events
        events = unpack(data)
        if events and self.faults.rejects(events):
            raise ValueError(self.faults.reject_message)
        if events and not self.faults.ack_only:
            self.store.add(events, transport=transport, interaction=interaction, claims=claims)
        self.acked.add(len(events))
        return len(events)

    def _usable_events(self, data: bytes | None) -> list[dict]:
        try:
            value = decode(data or b"")
        except ValueError:
            self.dropped.add("invalid_json")
            return []
        if isinstance(value, list):
            if not self.faults.accept_arrays:
                self.dropped.add("array")
                return []
            items = value
        else:
            items = [value]
        events = []
        for item in items:
            if not isinstance(item, dict):
                self.dropped.add("not_an_object")
            elif "logger_name" not in item:
                self.dropped.add("no_logger_name")
            elif item["logger_name"] != "STATUS":
                # The service sends it to its general log topic: it never becomes a status.
                self.dropped.add("not_status")
            else:
                try:
                    events.append(normalise(item))
                except ValueError:
                    # The service would pass it on unread; no consumer of statuses can use it.
                    self.dropped.add("invalid_status")
        return events

    def _bound_events(self, data: bytes | None) -> list[dict]:
        value = decode(data or b"")
        if isinstance(value, list):
            if not self.faults.accept_arrays:
                raise EventError("a JSON array cannot be bound to one status")
            if not value:
                raise EventError("the JSON array is empty")
            return [_bind(item) for item in value]
        return [_bind(value)]

    def stats(self) -> dict:
        """Counters; the store's figures only when storing (ack-only mode answers without SQL)."""
        return {
            **({} if self.faults.ack_only else self.store.stats()),
            "acked": self.acked.as_dict(),
            # acknowledged but unusable (what the real service drops after its ack): an
            # end-to-end test asserts this stays 0.
            "dropped": self.dropped.total,
            "dropped_by_reason": dict(self.dropped.by_reason),
            **{name: listener.counters() for name, listener in self.listeners.items()},
        }

    def close(self) -> None:
        """Close the store; the transports are closed first by whoever started them."""
        self.store.close()


def _bind(item: object) -> dict:
    """The service's HTTP path: normalise() holds its binding rules (timestamps included), but
    that path takes any logger_name and files the event as a status all the same."""
    if isinstance(item, dict) and isinstance(item.get("logger_name"), str):
        item = {k: v for k, v in item.items() if k != "logger_name"}
    return normalise(item)


class DropCounter:
    """Requests (or array elements) acknowledged and then dropped, by reason."""

    def __init__(self) -> None:
        self.total = 0
        self.by_reason: dict[str, int] = {}

    def add(self, reason: str) -> None:
        self.total += 1
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1


class AckCounter:
    """Requests and events accepted since start or the last reset, with when the first and the
    last of them were (Unix times, None before the first): a sender's rate, timed here."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.events = 0
        self.first_at: float | None = None
        self.last_at: float | None = None

    def add(self, events: int) -> None:
        now = self._clock()
        if self.first_at is None:
            self.first_at = now
        self.last_at = now
        self.requests += 1
        self.events += events

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "events": self.events,
            "first_at": self.first_at,
            "last_at": self.last_at,
        }
