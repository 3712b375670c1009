"""The `relay` command. Every error a user can cause is one line on stderr, never a traceback.

`main.py` builds the parser from the commands' modules: `serve.py` (run, check-config, token,
demo, dev-upstream), `spool.py` (`relay spool`), `dlq.py` (`relay dlq`), `status.py`
(`relay status`). The spool commands speak to `relay.spool.api.SpoolAdmin` only.
"""

from relay.cli.main import EXIT_USAGE, main

__all__ = ["EXIT_USAGE", "main"]
