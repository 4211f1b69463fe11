"""The Beam extraction job against a bare sequential loop, and 2 worker processes against 1.

Writes synthetic videos (``vidfuse.synth``) to a temp dir, then measures, side by side in
one run and on the same videos and config (default ``configs/extract/tiny.yaml``, random
weights), the wall time of:

- ``bare loop``: one process, no Beam: build every extractor, then per video ``open_video``
  -> per extractor ``sample_indices`` -> ``get_frames`` -> ``preprocess`` -> ``embed`` ->
  ``pool`` (the library calls the job makes), features kept in memory, nothing written;
- ``beam 1 worker``: ``run_extraction`` with ``--direct_num_workers=1``, which the job runs
  inside this process (DirectRunner ``in_memory``: no worker start-up);
- ``beam 1 worker proc``: the same in one worker process (``multi_processing``), for context;
- ``beam N workers``: ``--direct_num_workers=N``, ``multi_processing`` (the job's default mode:
  worker processes start, import torch, build the models).

Every Beam run writes Parquet+HDF5 shards of ``--shard-size`` rows into a fresh folder and
includes the launcher's work (listing, manifests, model check, dead-letter merge).

Methods run interleaved, in rotating order, ``--repeats`` times. The table shows videos/s of
the best run (timeit's rule: other load on a shared machine only ever adds time), the median
and the spread, and ratios of best times: to the bare loop (target >= 0.85x for one worker)
and to one worker (target >= 1.5x for 2 workers where decoding dominates). ``CPU s``: this
process plus its finished children (the Beam workers), median; ``cores`` = CPU s / wall s, the
cores a method actually got (on a shared machine, what other processes left).

A Beam run has a fixed cost (worker processes, imports, model builds) that a small run cannot
amortise. Within each Beam run the completion times of its shards (file mtimes) give
``start s`` (run start -> first complete shard, median) and ``steady v/s`` (videos in the
later shards / time from the first to the last shard, best), compared with the bare loop's rate
in ``steady vs bare``. Since shards are written after a GroupByKey (retry-safe names), they are
committed when the embedding stage ends: ``start s`` is then most of the run and ``steady`` n/a.

``--gpu`` (where CUDA is present): CLIP ViT-B/32 (random weights) frames/s of the job against the
bare model loop at the same batch and precision, and fp32 against bf16; without CUDA the rows
are printed as skipped.

Torch intra-op threads (column ``threads``, processes x threads): by default the bare loop and
the in-process worker use torch's default and worker processes get what the job gives them
(cores // workers); ``--torch-threads K`` sets K everywhere, which keeps a loaded machine's
OpenMP threads from spinning against each other and makes the comparison per core.

    python benchmarks/extract.py [--videos 40 --larger 120 --repeats 3 --workers 1,2 --torch-threads 0] [--gpu]
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

import pipeline.extract_job as extract_job  # noqa: E402
from pipeline.config import ExtractConfig  # noqa: E402
from pipeline.decode import open_video  # noqa: E402
from pipeline.sampling import sample_indices  # noqa: E402
from extractors.registry import build_extractor  # noqa: E402
from vidfuse.config import load_config  # noqa: E402
from vidfuse.synth import generate_dataset  # noqa: E402


@dataclass
class Run:
    wall: float
    cpu: float
    start: float | None = None  # run start -> first complete shard
    steady: float | None = None  # videos/s between the first and the last shard


def bare_loop(videos: list[Path], config: ExtractConfig) -> None:
    """The sequential baseline: the job's library calls, no Beam, nothing written."""
    built = {n: build_extractor(n, config.extractors[n], device="cpu") for n in config.extractors}
    for path in videos:
        with open_video(str(path), backend=config.decode.backend, fallback=config.decode.fallback) as reader:
            for extractor in built.values():
                indices = sample_indices(extractor.config.sampling, reader.info.num_frames)
                units = extractor.embed(extractor.preprocess(reader.get_frames(indices.ravel())))
                extractor.pool(units)


def shard_timeline(out: Path, started: float, extractors: int) -> tuple[float, float | None]:
    """(s from ``started`` to the first complete shard, videos/s from the first to the last)."""
    shards = sorted((p.stat().st_mtime, pq.ParquetFile(p).metadata.num_rows) for p in out.glob("*/part-*.parquet"))
    first, last = shards[0][0], shards[-1][0]
    later_rows = sum(rows for t, rows in shards if t > first)
    steady = later_rows / extractors / (last - first) if last > first else None
    return first - started, steady


def beam_run(video_dir: Path, out: Path, config: ExtractConfig, beam_args: list[str]) -> tuple[float, float | None]:
    shutil.rmtree(out, ignore_errors=True)
    started = time.time()
    summary = extract_job.run_extraction(str(video_dir), str(out), config, beam_args=beam_args, progress=False)
    if summary.failed or summary.done != summary.total:
        raise RuntimeError(f"benchmark run did not extract every video: {summary.line()}")
    return shard_timeline(out, started, len(config.extractors))


def gpu_rows(videos: list[Path], out: Path, repeats: int) -> None:
    """CLIP ViT-B/32 on CUDA: the job vs the bare decode+embed loop, fp32 and bf16 (frames/s)."""
    if not torch.cuda.is_available():
        print("\nGPU: skipped: no GPU was available")
        return
    for precision in ("fp32", "bf16"):
        config = load_config(ExtractConfig, "default", [
            "extractors.clip.pretrained=null", f"inference.precision={precision}"], kind="extract")
        config.extractors = {"clip": config.extractors["clip"]}
        frames = len(videos) * config.extractors["clip"].sampling.num_frames

        def bare() -> None:
            extractor = build_extractor("clip", config.extractors["clip"], device="cuda")
            extractor.set_precision(precision)
            for path in videos:
                with open_video(str(path), backend=config.decode.backend, fallback=config.decode.fallback) as reader:
                    indices = sample_indices(extractor.config.sampling, reader.info.num_frames)
                    extractor.pool(extractor.embed(extractor.preprocess(reader.get_frames(indices.ravel()))))
            torch.cuda.synchronize()

        def job() -> None:
            shutil.rmtree(out, ignore_errors=True)
            extract_job.run_extraction(str(videos[0].parent), str(out), config, device="cuda",
                                       beam_args=["--direct_num_workers=1"], progress=False)

        best = {}
        for name, fn in (("bare", bare), ("job", job)):
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            best[name] = min(times)
        print(f"GPU {precision}: bare {frames / best['bare']:.1f} frames/s, job {frames / best['job']:.1f} frames/s, "
              f"job / bare {best['bare'] / best['job']:.2f}x (target >= 0.8x)")


def cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure(methods: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[Run]]:
    """One Run per method and repeat; methods interleaved in rotating order."""
    runs: dict[str, list[Run]] = {m: [] for m in methods}
    order = list(methods)
    for rnd in range(repeats):
        shift = rnd % len(order)
        for m in order[shift:] + order[:shift]:
            w, c = time.perf_counter(), cpu_seconds()
            timeline = methods[m]()
            run = Run(time.perf_counter() - w, cpu_seconds() - c, *(timeline or (None, None)))
            runs[m].append(run)
            print(f"  round {rnd + 1}: {m:<20} {run.wall:7.1f} s  (load {os.getloadavg()[0]:.1f})", flush=True)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--videos", type=int, default=40)
    ap.add_argument("--larger", type=int, default=0, help="also this many videos (0: none)")
    ap.add_argument("--workers", default="1,2", help="worker process counts to time")
    ap.add_argument("--size", default="128x96", help="video WIDTHxHEIGHT")
    ap.add_argument("--seconds", default="2,4", help="video duration range, s")
    ap.add_argument("--shard-size", type=int, default=4, help="rows per shard (finer timeline)")
    ap.add_argument("--torch-threads", type=int, default=0, help="threads per process everywhere (0: defaults)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gpu", action="store_true", help="also the CUDA rows (skipped without a GPU)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("apache_beam").setLevel(logging.ERROR)

    config = load_config(ExtractConfig, args.config, [f"output.shard_size={args.shard_size}"], kind="extract")
    width, height = (int(v) for v in args.size.split("x"))
    seconds = tuple(float(v) for v in args.seconds.split(","))
    sizes = [args.videos] + ([args.larger] if args.larger else [])
    cores = os.cpu_count() or 1
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
        job_threads = extract_job.worker_torch_threads
        extract_job.worker_torch_threads = lambda options: args.torch_threads if job_threads(options) else None

    modes = {
        "beam 1 worker": ["--direct_num_workers=1"],  # the job's default for one worker: in this process
        "beam 1 worker proc": ["--direct_running_mode=multi_processing", "--direct_num_workers=1"],
    }
    for w in (int(x) for x in args.workers.split(",")):
        if w > 1:
            modes[f"beam {w} workers"] = ["--direct_running_mode=multi_processing", f"--direct_num_workers={w}"]

    def threads(method: str) -> str:
        per_worker = extract_job.worker_torch_threads(extract_job.beam_options(modes[method])) if method in modes else None
        return f"{method.split()[1]}x{per_worker}" if per_worker else str(torch.get_num_threads())

    with tempfile.TemporaryDirectory(prefix="vidfuse-bench-extract-") as tmp:
        root, out = Path(tmp), Path(tmp) / "out"
        dirs = {
            n: generate_dataset(root / f"synth{n}", n, seed=0, width=width, height=height, duration=seconds,
                                progress=False).videos_dir
            for n in sizes
        }
        bare_loop(sorted(dirs[sizes[0]].glob("*.mp4"))[:2], config)  # imports and first calls, untimed
        print(
            f"config {args.config} (extractors {', '.join(config.extractors)}), videos {width}x{height}, "
            f"{seconds[0]:g}-{seconds[1]:g} s, shards of {args.shard_size}; {cores} cores, load average "
            f"{os.getloadavg()[0]:.1f}; {args.repeats} repeats, interleaved\n",
            flush=True,
        )
        results = {}
        for n in sizes:
            videos = sorted(dirs[n].glob("*.mp4"))
            methods: dict[str, Callable[[], object]] = {"bare loop": lambda v=videos: bare_loop(v, config)}
            for name, beam_args in modes.items():
                methods[name] = lambda d=dirs[n], a=beam_args: beam_run(d, out, config, a)
            print(f"{n} videos:", flush=True)
            results[n] = measure(methods, args.repeats)
        if args.gpu:
            gpu_rows(sorted(dirs[sizes[0]].glob("*.mp4")), out, args.repeats)
        end_load = os.getloadavg()[0]

    for n in sizes:
        best = {m: min(r.wall for r in runs) for m, runs in results[n].items()}
        bare = best["bare loop"]
        print(f"\n{n} videos")
        header = (
            f"{'method':<19} {'threads':>7} {'best v/s':>8} {'median':>7} {'spread':>11} {'CPU s':>6} {'cores':>5} {'vs bare':>8} "
            f"{'vs 1 worker':>12} {'vs 1 proc':>10} {'start s':>8} {'steady v/s':>11} {'steady vs bare':>15}"
        )
        print(header)
        print("-" * len(header))
        for m, runs in results[n].items():
            rates = sorted(n / r.wall for r in runs)
            line = (
                f"{m:<19} {threads(m):>7} {n / best[m]:>8.2f} {statistics.median(rates):>7.2f} "
                f"{rates[0]:>5.2f}-{rates[-1]:<5.2f} {statistics.median(r.cpu for r in runs):>6.1f} "
                f"{statistics.median(r.cpu / r.wall for r in runs):>5.2f} "
                f"{bare / best[m]:>7.2f}x"
            )
            for ref, width in (("beam 1 worker", 12), ("beam 1 worker proc", 10)):
                shown = m in modes and m != ref and not (ref == "beam 1 worker proc" and m == "beam 1 worker")
                line += f" {best[ref] / best[m]:>{width - 1}.2f}x" if shown else f" {'':>{width}}"
            if m in modes:
                steady = max((r.steady for r in runs if r.steady), default=None)
                line += f" {statistics.median(r.start for r in runs):>8.1f}"
                line += f" {steady:>11.2f} {steady / (n / bare):>14.2f}x" if steady else f" {'n/a':>11} {'n/a':>15}"
            print(line)
    print(
        f"\nload average at the end {end_load:.1f} on {cores} cores. Ratios from best-of times. Targets: beam 1 worker "
        ">= 0.85x the bare loop; 2 workers >= 1.5x 1 worker where decoding dominates. start = run start to the "
        "first complete shard (start-up + one shard of work); steady = videos/s from the first to the last shard; "
        "cores = CPU s / wall s; "
        "threads = processes x torch threads. 1 worker runs in this process (the job's default); "
        "'1 worker proc' forces a worker process."
    )


if __name__ == "__main__":
    main()
