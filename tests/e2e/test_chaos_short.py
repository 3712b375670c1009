"""A short chaos campaign (benchmarks/chaos.py): every fault kind at least once, nothing
acknowledged lost, nothing but the deliberately rejected kind dead-lettered."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("relay_kill", "disk_full", "upstream_kill", "upstream_freeze", "token_down", "reject")


def test_short_chaos_campaign_loses_nothing(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.chaos", "--seconds", "25", "--seed", "1"]
        + ["--workdir", str(tmp_path / "chaos"), "--drain-timeout", "60"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
    )
    out = result.stdout
    assert result.returncode == 0, out[-4000:] + result.stderr[-2000:]
    table = out[out.rindex("faults injected") :]
    for kind in KINDS:
        count = re.search(rf"^  {kind}\s+(.+)$", table, re.MULTILINE).group(1)
        if kind == "disk_full" and count.startswith("skipped"):
            continue  # no permission to mount a tmpfs here; the campaign said so
        assert int(count) >= 1, f"no {kind} fault injected:\n{table}"
    assert re.search(r"LOST \(must be 0\)\s+0$", table, re.MULTILINE), table
    # read from every stand-in process before it was killed or stopped
    dropped = re.search(
        r"^acknowledged and dropped by the stand-in \(must be 0\)\s+(.+)$", table, re.M
    )
    assert dropped, table
    assert dropped.group(1).startswith("0, over"), (
        "benchmarks.chaos must read the stand-in's dropped count (StandInDrops) and find 0: "
        + dropped.group(1)
    )
    assert "verdict" in table and "PASS" in table
