"""wrk, when installed: one event per POST, each with its own message_id (post_unique.lua)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import orjson

from benchmarks.events import SEED_EVENT, new_run_tag

SCRIPT = Path(__file__).with_name("post_unique.lua")


def available() -> bool:
    return shutil.which("wrk") is not None


def run(url: str, connections: int, seconds: float) -> dict:
    """wrk's figures: requests, non-2xx answers and socket errors within `seconds`."""
    with tempfile.NamedTemporaryFile(suffix=".json") as template:
        template.write(orjson.dumps(dict(SEED_EVENT, message_id="MESSAGE_ID")))
        template.flush()
        args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s"]
        args += ["-s", str(SCRIPT), url, "--", template.name, new_run_tag()]
        out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60, check=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    r = orjson.loads(line[len("RESULT ") :])
    failed = r["non2xx"] + r["connect"] + r["read"] + r["write"] + r["timeout"]
    seconds = r["duration_us"] / 1e6
    return {
        "events_per_s": round((r["requests"] - failed) / seconds, 1),
        "ok": r["requests"] - failed,
        "failed": failed,
        "seconds": seconds,
        "latency_ms": {"p50": r["p50_us"] / 1000, "p99": r["p99_us"] / 1000},
    }
