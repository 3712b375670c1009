"""How configuration problems are reported.

Every problem is raised as a one-line :class:`~relay.errors.ConfigError` that names the
setting, where the bad value came from, and what to write instead. Rejected values are quoted
TOML-style, the way the operator would write them in the file.
"""

from __future__ import annotations

from relay.errors import ConfigError


def _error(message: str) -> ConfigError:
    # Operators read these in journald/kubectl logs where a stray newline splits the message.
    return ConfigError(" ".join(message.splitlines()))


# Here rather than in render.py because messages need it too, and render.py sits above the
# modules that raise errors; sharing it keeps a value spelled alike in messages and output.
def _toml_string(text: str) -> str:
    """Quote ``text`` as a TOML basic string (json.dumps differs on DEL and surrogates)."""
    out = ['"']
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _show(value: object) -> str:
    """Describe a rejected value briefly and on one line, TOML-style."""
    if isinstance(value, str):
        if len(value) > 60:
            value = value[:57] + "..."
        return _toml_string(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"
