"""Errors a user can cause. Each carries one line that says what is wrong and what to do."""


class UserError(Exception):
    """A problem the operator can fix; printed as one line, never as a traceback."""


class ConfigError(UserError):
    """The configuration file or an environment override is invalid."""
