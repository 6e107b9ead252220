"""Summarise a py-spy ``--format raw`` (collapsed stacks) file: top functions by self and by inclusive samples.

    .venv/bin/python bench/spy_top.py /tmp/spy/worker-phase-a-*.txt [--top 30] [--match orchestrator/]

Idle samples (a pool process waiting for its next message) are counted apart, so percentages are of busy time.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

IDLE_LEAVES = ("select (", "poll (", "epoll", "_recv (", "recv_into", "wait (threading", "_wait_for_tstate_lock")
# Paths are shown from the repository's root (wherever the checkout is), site-packages or the standard library.
ROOT = str(Path(__file__).resolve().parents[1]) + "/"
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def short(frame: str) -> str:
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    file = m.group("file")
    for marker in ("site-packages/", ROOT, "lib/python3.11/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({file})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--match", action="append", default=[], help="also list inclusive shares of frames matching")
    args = parser.parse_args()

    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    busy = idle = 0
    for path in args.files:
        for line in path.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            stack, _, count_s = line.rpartition(" ")
            count = int(count_s)
            frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
            if not frames:
                continue
            leaf = frames[-1]
            if any(marker in leaf for marker in IDLE_LEAVES):
                idle += count
                continue
            busy += count
            self_c[short(leaf)] += count
            for name in {short(f) for f in frames}:
                incl[name] += count
    total = busy + idle
    print(f"{total} samples: {busy} busy ({busy / max(1, total):.0%}), {idle} idle/waiting")
    print(f"\n-- top {args.top} by self samples (% of busy):")
    for name, count in self_c.most_common(args.top):
        print(f"{count / busy:6.1%}  {name}")
    print(f"\n-- top {args.top} by inclusive samples (% of busy):")
    for name, count in incl.most_common(args.top):
        print(f"{count / busy:6.1%}  {name}")
    for pattern in args.match:
        print(f"\n-- inclusive, frames matching {pattern!r}:")
        for name, count in incl.most_common():
            if pattern in name:
                print(f"{count / busy:6.1%}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
