"""Fault switches of the status-service stand-in, changeable while it runs.

Handlers read the one shared StatusFaults object on every request, so a test or the admin
endpoint can turn a fault on between two requests without restarting anything.

``ack_only`` is not a fault but a benchmark mode kept with them for the same reason: requests
are checked and answered as usual but counted instead of stored. ``accept_arrays`` is not a
fault either: the real service drops a JSON array after acknowledging it, so by default the
stand-in does the same (counted as dropped); only an upstream that declares array support
(``relay dev-upstream --accept-arrays``) stores each element.

Token faults play a service that does not trust a token it could verify:
``refuse_first_tokens`` refuses the first N distinct tokens seen (since the switch was last
set) with Spring's "Failed to validate the token" and accepts later ones, as a service that
refused only the first token it saw; ``refuse_tokens_text`` refuses every token with that text.
``reject_code`` chooses the RSocket error of the reject faults (the real service sends only
APPLICATION_ERROR; REJECTED and INVALID are there to test the relay's handling of them).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["REJECT_CODES", "StatusFaults"]

# Statuses for which an HTTP client is told when to come back.
_RETRY_AFTER_STATUSES = frozenset({429, 503})


@dataclass
class StatusFaults:
    reject_fraction: float = 0.0
    reject_match: dict[str, str] = field(default_factory=dict)
    reject_message: str = "rejected by stand-in fault switch"
    delay: float = 0.0
    drop_after: int = 0
    http_status: int = 0
    http_fraction: float = 1.0
    retry_after: int = 1
    reject_code: str = "APPLICATION_ERROR"
    refuse_first_tokens: int = 0
    refuse_tokens_text: str = ""
    accept_arrays: bool = False
    ack_only: bool = False

    def __post_init__(self) -> None:
        # Bumped whenever refuse_first_tokens is set: "the first N tokens" count from then.
        self.token_epoch = 0
        # Validate constructor arguments the same way as admin changes.
        self.update(dataclasses.asdict(self))

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply ``changes`` (e.g. admin JSON) all or nothing; a ValueError names the culprit."""
        if not isinstance(changes, Mapping):
            raise ValueError("faults must be a JSON object of fault names to values")
        known = {f.name for f in dataclasses.fields(self)}
        checked: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown fault {name!r}; known: {', '.join(sorted(known))}")
            checked[name] = _CHECKS[name](name, value)
        for name, value in checked.items():
            setattr(self, name, value)
        if "refuse_first_tokens" in checked:
            self.token_epoch += 1

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def rejects(self, events: Iterable[Mapping[str, Any]]) -> bool:
        """Whether a request carrying ``events`` is to be refused (reject_match or the dice)."""
        match = self.reject_match
        if match and any(all(e.get(k) == v for k, v in match.items()) for e in events):
            return True
        return self.reject_fraction > 0 and random.random() < self.reject_fraction

    def http_fault(self) -> tuple[int, dict[str, str]] | None:
        """(status, headers) when this HTTP request is to get the http_status fault, else None."""
        if not self.http_status or random.random() >= self.http_fraction:
            return None
        headers = {}
        if self.http_status in _RETRY_AFTER_STATUSES:
            headers["Retry-After"] = str(self.retry_after)
        return self.http_status, headers


def _rule(
    described: str, ok: Callable[[Any], bool], convert: Callable[[Any], Any] = lambda v: v
) -> Callable[[str, Any], Any]:
    """A check of one fault's value: ``convert(value)`` if ``ok(value)``, else a ValueError
    naming the fault and what it must be (the admin endpoint answers it as the reason)."""

    def check(name: str, value: Any) -> Any:
        if not ok(value):
            raise ValueError(f"fault {name} must be {described}, got {value!r}")
        return convert(value)

    return check


def _number(value: Any) -> bool:
    # bool is an int subclass; true/false as a number is almost certainly a mistake.
    return type(value) in (int, float)


def _string_map(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        type(k) is str and type(v) is str for k, v in value.items()
    )


REJECT_CODES = ("APPLICATION_ERROR", "REJECTED", "INVALID")

_fraction = _rule("a number from 0 to 1", lambda v: _number(v) and 0.0 <= v <= 1.0, float)
_seconds = _rule(
    "a number of seconds >= 0", lambda v: _number(v) and math.isfinite(v) and v >= 0, float
)
_count = _rule("an integer >= 0", lambda v: type(v) is int and v >= 0)
_http_status = _rule(
    "0 (off) or an HTTP status 100-599",
    lambda v: type(v) is int and (v == 0 or 100 <= v <= 599),
)
_text = _rule("a string", lambda v: type(v) is str)
_flag = _rule("true or false", lambda v: type(v) is bool)
_reject_code = _rule(f"one of {', '.join(REJECT_CODES)}", lambda v: v in REJECT_CODES)
_match = _rule("an object of field names to strings", _string_map, dict)

_CHECKS = {
    "reject_fraction": _fraction,
    "reject_match": _match,
    "reject_message": _text,
    "delay": _seconds,
    "drop_after": _count,
    "http_status": _http_status,
    "http_fraction": _fraction,
    "retry_after": _count,
    "reject_code": _reject_code,
    "refuse_first_tokens": _count,
    "refuse_tokens_text": _text,
    "accept_arrays": _flag,
    "ack_only": _flag,
}
