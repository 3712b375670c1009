"""Summarise a py-spy profile: where the samples went, by function.

    py-spy record -p PID -d 10 -r 200 --threads -f raw -o prof.txt
    python -m benchmarks.pyspy_summary prof.txt [--top 25]

Prints the share of samples per thread, then per function the share in it or below it
(inclusive) and in it alone (self). py-spy and this module are for profiling by hand; the
benchmarks do not need them.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m["file"]
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m['func']} ({path})"


def summarise(path: str, top: int) -> str:
    threads: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            n = int(count)
            frames = stack.split(";")
            total += n
            threads[frames[0]] += n
            names = [_short(fr) for fr in frames[1:]]
            for name in set(names):
                inclusive[name] += n
            if names:
                own[names[-1]] += n
    out = [f"{total} samples"]
    out += [f"  {100 * n / total:5.1f}%  {t}" for t, n in threads.most_common()]
    out.append(f"\ninclusive (top {top}):")
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    out.append(f"\nself (top {top}):")
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file")
    p.add_argument("--top", type=int, default=25)
    a = p.parse_args()
    print(summarise(a.file, a.top))


if __name__ == "__main__":
    main()
