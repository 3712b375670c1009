"""Errors a user can cause. Each carries one line that says what is wrong and what to do."""


class UserError(Exception):
    """A problem the operator can fix; printed as one line, never as a traceback."""


class ConfigError(UserError):
    """The configuration file or an environment override is invalid."""


def one_line(text: str, limit: int = 500) -> str:
    """`text` on one line (whitespace runs folded) and at most `limit` characters: safe to put
    in a log line, a /readyz reason or an answer whatever the peer sent."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
