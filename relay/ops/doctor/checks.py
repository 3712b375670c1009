"""The doctor's result model: one line per check, and what the lines add up to.

A line names its hop (``config``, ``spool``, ``credentials``, ``maskinporten``, ``upstream``,
``relay``) and its check within the hop, and says ``ok``, ``warning``, ``failed`` or ``skipped``
(a check that needs an earlier one that failed: it would only fail with a confusing error), with
a one-line reason and what to do. Reasons come from code that never puts a secret into them;
:func:`one_line` bounds their length whatever a peer answered.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from relay.errors import one_line

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*){0,2}")

__all__ = ["FAILED", "OK", "SKIPPED", "STATES", "WARNING", "Check", "Report", "split_advice"]

OK = "ok"
WARNING = "warning"
FAILED = "failed"
SKIPPED = "skipped"
STATES = (OK, WARNING, FAILED, SKIPPED)

_MAX_DETAIL = 400


@dataclass(frozen=True)
class Check:
    hop: str
    check: str
    state: str
    detail: str
    todo: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Report:
    """The lines in the order they were checked, with a name per check for the dependencies."""

    def __init__(self) -> None:
        self.checks: list[Check] = []
        self._secrets: dict[str, str] = {}

    def add(self, hop: str, check: str, state: str, detail: str, todo: str = "") -> Check:
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        for secret, shown in self._secrets.items():
            detail, todo = detail.replace(secret, shown), todo.replace(secret, shown)
        # and anything shaped like a JWT: a peer's answer may quote a token cut short, which
        # the exact replacement above no longer finds
        detail, todo = _JWT.sub("<a token>", detail), _JWT.sub("<a token>", todo)
        line = Check(hop, check, state, one_line(detail, _MAX_DETAIL), one_line(todo, _MAX_DETAIL))
        self.checks.append(line)
        return line

    def ok(self, hop: str, check: str, detail: str) -> Check:
        return self.add(hop, check, OK, detail)

    def warn(self, hop: str, check: str, detail: str, todo: str = "") -> Check:
        return self.add(hop, check, WARNING, detail, todo)

    def fail(self, hop: str, check: str, detail: str, todo: str = "") -> Check:
        return self.add(hop, check, FAILED, detail, todo)

    def skip(self, hop: str, check: str, needs: str) -> Check:
        return self.add(hop, check, SKIPPED, f"needs {needs}")

    def hide(self, secret: str, shown: str) -> None:
        """From now on, `secret` is replaced by `shown` in every line added (a peer's answer,
        quoted in a line, may echo what it was sent), before the line is cut to length."""
        if secret:
            self._secrets[secret] = shown

    def passed(self, hop: str, check: str) -> bool:
        """Whether `hop`/`check` ran and did not fail (ok or warning): its dependants may run."""
        return any(
            c.hop == hop and c.check == check and c.state in (OK, WARNING) for c in self.checks
        )

    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.state == FAILED]

    @property
    def exit_code(self) -> int:
        """0 when nothing failed (warnings allowed), 1 otherwise."""
        return 1 if self.failed() else 0

    def as_json(self) -> list[dict[str, Any]]:
        return [c.as_dict() for c in self.checks]

    def render(self, title: str = "") -> str:
        lines = [title] if title else []
        lines += [_render(c) for c in self.checks]
        lines.append(_summary(self.checks))
        return "\n".join(lines)


def split_advice(message: str, default: str) -> tuple[str, str]:
    """A one-line error "what is wrong; what to do" (the project's form) as (reason, todo);
    `default` is the todo when the message has none."""
    reason, _, advice = message.rpartition("; ")
    return (reason, advice) if reason and advice else (message, default)


def _render(c: Check) -> str:
    text = f"{c.state.upper():<8} {c.hop:<13} {c.check}: {c.detail}"
    if c.todo:
        text += f"\n{'':<23}-> {c.todo}"
    return text


def _summary(checks: Iterable[Check]) -> str:
    checks = list(checks)
    counts = {s: sum(1 for c in checks if c.state == s) for s in STATES}
    text = ", ".join(
        f"{n} {s}{'s' if s == WARNING and n > 1 else ''}" for s, n in counts.items() if n
    )
    first = next((c for c in checks if c.state == FAILED), None)
    if first is None:
        return f"result: all checks passed ({text})"
    return f"result: {text}; the first broken hop is {first.hop} ({first.check})"
