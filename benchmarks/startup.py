"""Start-up of each command: interpreter, imports and argument checks, up to its first input check.

Each command is run with an input that does not exist, so it stops where its work would begin
(after what it imports to do that work); the CPU seconds (user + sys of the child) are the
figure, since wall time on a shared machine mostly measures the other jobs. ``--compare-with
TREE`` runs the same commands from another checkout (e.g. the commit before) side by side.

    python benchmarks/startup.py [--compare-with /path/to/other/checkout] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def commands(missing: str, out: str) -> dict[str, list[str]]:
    return {
        "--help": ["--help"],
        "extract": ["extract", missing, "--out", out, "--config", "tiny", "--no-progress"],
        "extract-text": ["extract-text", missing, "--out", out, "--config", "tiny", "--no-progress"],
        "train": ["train", "--features", missing, "--captions", missing, "--config", "tiny_laff", "--out", out],
        "index": ["index", "--run", missing, "--out", out],
        "benchmark": ["benchmark", "--run", missing, "--index", missing, "--out", out],
        "search": ["search", "--run", missing, "--index", missing, "a query"],
    }


def measure(tree: Path, argv: list[str]) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, exit status) of ``vidfuse ARGV`` run from ``tree``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "vidfuse.cli", *argv], cwd=tree, capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(tree)})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare-with", type=Path, default=None, help="another checkout, run side by side")
    parser.add_argument("--repeat", type=int, default=3, help="runs per command (the minimum is reported)")
    args = parser.parse_args()
    trees = {"this tree": REPO} | ({"compared": args.compare_with} if args.compare_with else {})
    with tempfile.TemporaryDirectory() as tmp:
        todo = commands(os.path.join(tmp, "missing"), os.path.join(tmp, "out"))
        print(f"load average {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
        print("| command | " + " | ".join(f"{name} CPU s (wall s)" for name in trees) + " |")
        print("|:---|" + "---:|" * len(trees))
        for name, argv in todo.items():
            cells = []
            for tree in trees.values():
                runs = [measure(tree, argv) for _ in range(args.repeat)]
                cpu = min(r[0] for r in runs)
                wall = min(r[1] for r in runs)
                cells.append(f"{cpu:.2f} ({wall:.1f})")
            print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
