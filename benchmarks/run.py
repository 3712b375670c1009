"""Run the benchmarks: `python -m benchmarks.run [--quick] [--only 1,3] [--keep]`.

Prints a Markdown table (scenario | figure | baseline | ratio | target | verdict) and writes it
as JSON to benchmarks/results/latest.json. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks import report
from benchmarks.context import Ctx
from benchmarks.report import Row
from benchmarks.scenarios import backlog, delivery, ingest, jetstream, latency

SCENARIOS = [
    ("1", "ingest, 1 event/POST", ingest.single_events),
    # the jetstream rows each measure the sqlite spool beside it again, in alternating rounds
    ("1j", "ingest, 1 event/POST, jetstream vs sqlite", jetstream.ingest_single),
    ("2", "ingest, NDJSON", ingest.ndjson),
    ("2j", "ingest, NDJSON, jetstream vs sqlite", jetstream.ingest_ndjson),
    ("3", "delivery, RSocket", delivery.rsocket_single),
    ("3j", "delivery, RSocket, jetstream vs sqlite", jetstream.delivery),
    ("4", "delivery, RSocket batches", delivery.rsocket_batch),
    ("5", "delivery, HTTP", delivery.http_single),
    ("6", "end-to-end latency", latency.latency),
    ("7", "start-up with a backlog", backlog.startup),
    ("8", "memory while draining", backlog.drain_memory),
]
RESULTS = Path(__file__).parent / "results" / "latest.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Benchmarks of the relay against baselines.")
    p.add_argument("--quick", action="store_true", help="smaller backlogs, fewer rounds (< 2 min)")
    p.add_argument("--only", help="comma-separated scenario ids, e.g. 1,3,1j")
    p.add_argument("--keep", action="store_true", help="keep the working folder (logs, spools)")
    a = p.parse_args(argv)
    only = set(a.only.split(",")) if a.only else None
    root = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    ctx = Ctx(quick=a.quick, root=root)
    started, t0 = report.now_text(), time.monotonic()
    rows: list[Row] = []
    try:
        for sid, name, scenario in SCENARIOS:
            if only and sid not in only:
                continue
            print(f"scenario {sid}: {name}", flush=True)
            begun = time.monotonic()
            try:
                new = scenario(ctx)
            except Exception as exc:  # one broken scenario must not hide the others' figures
                traceback.print_exc()
                new = [Row(sid, name, None, "", error=f"{type(exc).__name__}: {exc}"[:300])]
            took = round(time.monotonic() - begun, 1)
            print(f"  scenario {sid} took {took} s", flush=True)
            for row in new:
                row.details["scenario_seconds"] = took
                ctx.rows[row.id] = row
            rows += new
    finally:
        if a.keep:
            print(f"working folder kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    info = {
        "machine": report.machine(),
        "mode": "quick" if a.quick else "full",
        "started": started,
        "seconds": time.monotonic() - t0,
    }
    print()
    print(report.markdown(rows, info))
    report.write_json(RESULTS, rows, info)
    print(f"\nwritten to {RESULTS}")
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
