"""Start-up of each command: interpreter, imports and argument checks, up to its first input check.

Each command is run with an input that does not exist, so it stops where its work would begin
(after what it imports to do that work); the CPU seconds (user + sys of the child) are the
figure, since wall time on a shared machine mostly measures the other jobs. ``--compare-with
TREE`` runs the same commands from another checkout (e.g. the commit before) side by side.

``--search`` then times a whole ``vidfuse search`` (start to hits) on a small index of a head
that reads no CLIP text (bow + GRU), which it builds first: the query encoded by the exported
ONNX text side (no torch import) beside the run's head in torch, in one run.

    python benchmarks/startup.py [--compare-with /path/to/other/checkout] [--repeat 3] [--search]
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


def build_no_clip_index(root: Path) -> tuple[Path, Path]:
    """synth (24 videos) -> extract clip, x3d -> extract-text bow -> tiny LAFF on bow + GRU -> Flat index."""
    sys.path.insert(0, str(REPO))
    from fusion.trainer import TrainConfig
    from index.run_index import build_index
    from pipeline.config import ExtractConfig
    from pipeline.extract_job import run_extraction
    from pipeline.text_job import run_text_extraction
    from pipeline.training_set import run_training
    from vidfuse.config import load_config
    from vidfuse.synth import generate_dataset

    data = generate_dataset(root / "data", 24, 0, width=64, height=48, duration=(1.0, 1.5), progress=False)
    features, run, index = root / "features", root / "run", root / "index"
    extract = load_config(ExtractConfig, "tiny", [], kind="extract")
    run_extraction(str(data.videos_dir), str(features), extract, extractors=["clip", "x3d"],
                   beam_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"], progress=False)
    run_text_extraction(str(data.captions_txt), str(features), extract, encoders=["bow"], progress=False)
    cfg = load_config(TrainConfig, "tiny_laff", ["epochs=1", "head.laff.text_features=[bow,gru]"], kind="train")
    run_training(cfg, str(features), str(data.captions_txt), str(run), resume=False, progress=False)
    build_index(str(run), str(index), device="cpu")
    return run, index


def time_search(run: Path, index: Path, repeat: int) -> None:
    print(f"\nwhole `vidfuse search` (start to hits), head on bow + GRU, load average {os.getloadavg()[0]:.1f}:")
    print("| query encoder | CPU s | wall s |")
    print("|:---|---:|---:|")
    for encoder in ("onnx", "torch"):
        argv = ["search", "--run", str(run), "--index", str(index), "--query-encoder", encoder, "-k", "3",
                "a red circle moves left"]
        runs = [measure(REPO, argv) for _ in range(repeat)]
        if any(r[2] != 0 for r in runs):
            raise SystemExit(f"search --query-encoder {encoder} failed")
        print(f"| {encoder} | {min(r[0] for r in runs):.2f} | {min(r[1] for r in runs):.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare-with", type=Path, default=None, help="another checkout, run side by side")
    parser.add_argument("--repeat", type=int, default=3, help="runs per command (the minimum is reported)")
    parser.add_argument("--search", action="store_true", help="also time a whole search, ONNX beside torch")
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
        if args.search:
            time_search(*build_no_clip_index(Path(tmp) / "search"), args.repeat)


if __name__ == "__main__":
    main()
