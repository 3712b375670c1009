"""Rows, targets and verdicts; the Markdown table and the JSON file."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson


@dataclass(frozen=True)
class Target:
    """`kind`: "ratio>=", "ratio<=", ">=", "<=" or "<"; "" for report only."""

    kind: str = ""
    value: float = 0.0
    unit: str = ""

    def text(self) -> str:
        if not self.kind:
            return "report only"
        if self.kind.startswith("ratio"):
            return f"{self.kind[5:]} {self.value:g} × baseline"
        return f"{self.kind} {fmt(self.value, self.unit)}"

    def miss(self, figure: float, ratio: float | None) -> str | None:
        """None when met, else by how much it is missed."""
        if not self.kind:
            return None
        x = ratio if self.kind.startswith("ratio") else figure
        if x is None:
            return "no figure"
        op = self.kind.removeprefix("ratio")
        ok = {">=": x >= self.value, "<=": x <= self.value, "<": x < self.value}[op]
        if ok:
            return None
        shown = f"{x:.2f} ×" if self.kind.startswith("ratio") else fmt(x, self.unit)
        if op == ">=":
            return f"{100 * (1 - x / self.value):.0f} % short ({shown})"
        return f"{100 * (x / self.value - 1):.0f} % over ({shown})"


@dataclass
class Row:
    id: str
    scenario: str
    figure: float | None
    unit: str
    baseline: float | None = None
    baseline_what: str = ""
    targets: list[Target] = field(default_factory=list)
    figure_text: str = ""  # instead of the plain figure, e.g. "p50 3 ms / p99 12 ms"
    details: dict = field(default_factory=dict)
    note: str = ""  # shown after the verdict, e.g. what limited the figure
    error: str = ""

    @property
    def ratio(self) -> float | None:
        if self.figure is None or not self.baseline:
            return None
        return self.figure / self.baseline

    def verdict(self) -> str:
        if self.error:
            return f"FAILED: {self.error}"
        if not self.targets or not any(t.kind for t in self.targets):
            return "report only"
        misses = [m for t in self.targets if (m := t.miss(self.figure, self.ratio))]
        return "MISSED: " + "; ".join(misses) if misses else "met"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["targets"] = [t.text() for t in self.targets]
        d.update(ratio=self.ratio, verdict=self.verdict())
        return d


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "–"
    if unit == "events/s":
        return f"{value:,.0f} events/s".replace(",", " ")
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "MB":
        return f"{value:.0f} MB"
    return f"{value:g} {unit}".strip()


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def machine() -> dict:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "load_generator": "wrk" if shutil.which("wrk") else "python (benchmarks.loadgen)",
        "commit": _commit(),
    }


def _commit() -> str:
    """The commit measured, "+changes" when relay/ differs from it (read-only git calls)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        diff = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--", "relay"], capture_output=True
        )
    except OSError:
        return ""
    return head.stdout.strip() + ("+changes" if diff.returncode == 1 else "")


def markdown(rows: list[Row], info: dict) -> str:
    m = info["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, {m['os']}; "
        f"load generator: {m['load_generator']}; commit {m['commit'] or '?'}; "
        f"{info['mode']} run of {info['started']}, {info['seconds']:.0f} s",
        "",
        "| scenario | figure | baseline | ratio | target | verdict |",
        "|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        figure = r.figure_text or fmt(r.figure, r.unit)
        base = fmt(r.baseline, r.unit) if r.baseline is not None else "–"
        if r.baseline_what and r.baseline is not None:
            base += f" ({r.baseline_what})"
        ratio = f"{r.ratio:.2f} ×" if r.ratio is not None else "–"
        target = "; ".join(t.text() for t in r.targets) or "report only"
        lines.append(
            f"| {r.id}. {r.scenario} | {figure} | {base} | {ratio} | {target} "
            f"| {r.verdict()}{' — ' + r.note if r.note else ''} |"
        )
    return "\n".join(lines)


def write_json(path: Path, rows: list[Row], info: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {**info, "rows": [r.as_dict() for r in rows]}
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))


def now_text() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z")
