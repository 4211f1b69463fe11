"""Scale run: how time and memory of each stage of the chain grow with the number of videos.

For each size N (default 500 and 2000) a synthetic dataset is generated and the demo's chain runs
on it with the tiny configs: synth -> extract (Beam, clip+x3d, config ``tiny``, default
DirectRunner: one worker per core) -> extract-text -> train (tiny_laff_ml, fixed epochs so the
time compares) -> index (Flat, test split) -> benchmark. Every stage runs in a fresh subprocess,
so its figures are its own:

- time: wall seconds of the stage's library call, timed inside the child (the modules the call
  imports lazily, e.g. apache_beam via pipeline.features, count: ~5 s of fixed cost for index and
  benchmark; the child's total wall time, process start included, is shown beside it);
- peak RSS: VmHWM read from /proc/self/status at the end of the child. Not ru_maxrss of
  RUSAGE_CHILDREN: Linux keeps ru_maxrss across exec, so a child started from a big parent
  reports the parent's size;
- tree peak: the largest sum of VmRSS over the child and its descendants (Beam's worker
  processes), sampled every 0.2 s by a thread in the child — the memory the stage holds in all.

The driver prints a table with the growth ratios (largest N / smallest N; linear is N ratio,
4.0 for 2000/500) and a verdict per stage: linear or better when the time ratio is at most
1.1 x the size ratio.

    python benchmarks/scale.py                     # N = 500, 2000 (~11 min on 2 shared cores)
    python benchmarks/scale.py --quick             # N = 100, 400
    python benchmarks/scale.py --sizes 200,800 --workdir /tmp/scale --keep
    python benchmarks/scale.py --stage train --n 500 --workdir W --profile   # one stage, cProfile
    python benchmarks/scale.py --sizes 2000,20000 --stages synth,extract   # the extraction launcher's figures
    python benchmarks/scale.py --sizes 2000,20000,200000 --stages done-set,launcher   # the launcher alone
    nice -n 5 python benchmarks/scale.py --text    # extract-text at 10k, 200k, 1M captions (~15 min)

``--text`` measures ``extract-text`` alone at N captions (default 10k, 200k and 1M: MSR-VTT has
200k) with every encoder (clip: the tiny config's random-init CLIP text tower; bow; w2v over a
300-d word-vector file of the vocabulary), on a caption file with a realistic vocabulary
(vidfuse.caption_corpus: Zipf over 4000 words, 4-20 words a caption). The caption file is
written by a child of its own ("corpus"), not timed; "text" is the extraction.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
# benchmarks/index.py would shadow the `index` package: keep this folder off sys.path.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, _ROOT)

STAGES = ("synth", "extract", "text", "train", "index", "benchmark")
# The extraction launcher alone, at sizes a full chain cannot reach here: ``done-set`` makes N video
# files (hard links to one small video) and N already-extracted ids per extractor (shards of the
# config's shard_size, written under the real manifests); ``launcher`` then times, in a fresh
# process, what the launcher does outside the workers' run: prepare the job (manifests, leftovers,
# graph) and the after-run steps (shard list into the manifests, errors.jsonl), with the graph size.
LAUNCHER_STAGES = ("done-set", "launcher")
TEXT_STAGES = ("corpus", "captions")  # --text: write N captions; extract-text of them (every encoder)
TEXT_SIZES = "10000,200000,1000000"
W2V_DIM = 300
EXTRACTORS = ("clip", "x3d")  # as vidfuse.demo.DEMO_EXTRACTORS
EXTRACT_CONFIG = "tiny"
HEAD = "tiny_laff_ml"
MiB = 1024 * 1024
LINEAR_SLACK = 1.1  # ratio <= 1.1 x size ratio (4.4 for 2000/500) counts as linear or better


# ---------------------------------------------------------------- memory (read in the child)

def _status_kib(field: str, pid: str = "self") -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def _descendants(root: int) -> list[int]:
    """Pids of every live descendant of ``root`` (one /proc scan)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


class TreeRSS(threading.Thread):
    """Samples the RSS summed over this process and its descendants; keeps the maximum."""

    def __init__(self, interval: float = 0.2):
        super().__init__(daemon=True)
        self.interval, self.peak_kib, self.max_procs = interval, 0, 1
        self._done = threading.Event()

    def run(self) -> None:
        me = os.getpid()
        while not self._done.is_set():
            pids = [me] + _descendants(me)
            total = sum(_status_kib("VmRSS", str(p)) for p in pids)
            self.peak_kib = max(self.peak_kib, total)
            self.max_procs = max(self.max_procs, len(pids))
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        self.join()


# ---------------------------------------------------------------- stages (run in the child)

def _paths(workdir: Path) -> dict[str, Path]:
    return {"data": workdir / "data", "features": workdir / "features", "run": workdir / "runs" / HEAD,
            "index": workdir / "indexes" / HEAD, "report": workdir / "reports" / "scale"}


def _dataset(workdir: Path, n: int, seed: int):
    from vidfuse.synth import generate_dataset

    # Finished videos are reused, so after the synth stage this only reads what is there.
    return generate_dataset(_paths(workdir)["data"], n, seed, progress=False)


def _launcher_stage(stage: str, n: int, workdir: Path) -> str:
    import numpy as np

    from pipeline.config import ExtractConfig
    from pipeline.extract_job import _merge_dead_letters, prepare_extraction
    from pipeline.manifest import write_manifest
    from pipeline.shards import FeatureRow, list_shards, write_shard
    from vidfuse.config import load_config

    cfg = load_config(ExtractConfig, EXTRACT_CONFIG, kind="extract")
    videos, out = workdir / "launcher-videos", workdir / "launcher-features"
    if stage == "done-set":
        sys.path.insert(0, os.path.join(_ROOT, "tests"))
        import video_factory as vf

        one = vf.write_video(workdir / "one.mp4", 10)
        for k in range(n):
            target = videos / f"g{k // 1000:03d}" / f"video{k:07d}.mp4"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(one, target)
        job = prepare_extraction(str(videos), str(out), cfg, EXTRACTORS, cfg.output.formats, ["--direct_num_workers=1"])
        for name in EXTRACTORS:
            manifest = job.manifests[name]
            vector, frames = np.zeros(manifest.dim, np.float32), np.zeros((1, manifest.dim), np.float32)
            size = cfg.output.shard_size
            for start in range(0, n, size):
                rows = [FeatureRow(f"g{k // 1000:03d}/video{k:07d}", vector, frames, 1) for k in range(start, min(n, start + size))]
                write_shard(job.out_dirs[name], f"part-{start:016x}", rows, cfg.output.formats, manifest.hash())
        return f"{n} videos, {n} done ids per extractor in shards of {cfg.output.shard_size}"
    t_imports = time.perf_counter()  # the imports the launcher's first call makes, timed apart
    from apache_beam.ml.inference import base  # noqa: F401
    from extractors import registry

    registry.available_extractors()
    imports_s = time.perf_counter() - t_imports
    t0 = time.perf_counter()
    job = prepare_extraction(str(videos), str(out), cfg, EXTRACTORS, cfg.output.formats, ["--direct_num_workers=1"])
    graph = len(job.pipeline.to_runner_api().SerializeToString())
    prepare_s = time.perf_counter() - t0
    hwm = _status_kib("VmHWM") / 1024
    t1 = time.perf_counter()
    for name in EXTRACTORS:  # the after-run steps, as run_extraction does them
        job.manifests[name].shards = sorted(
            {os.path.splitext(os.path.basename(p))[0] for f in cfg.output.formats for p in list_shards(job.out_dirs[name], f)})
        write_manifest(job.out_dirs[name], job.manifests[name])
    _merge_dead_letters(str(out), job.dead_prefix)
    after_s = time.perf_counter() - t1
    return (f"imports {imports_s:.1f} s; prepare {prepare_s:.2f} s (graph {graph / 1024:.0f} KiB, peak RSS "
            f"{hwm:.0f} MiB), after the run {after_s:.2f} s: launcher {prepare_s + after_s:.2f} s")


def run_text_stage(stage: str, n: int, workdir: Path, seed: int) -> str:
    """``corpus``: N captions + split files + word vectors of their vocabulary; ``captions``: extract-text."""
    corpus, w2v = workdir / "corpus", workdir / "w2v.txt"
    if stage == "corpus":
        import numpy as np

        from vidfuse.caption_corpus import FUNCTION_WORDS, made_up_words, write_caption_corpus

        write_caption_corpus(corpus, n, vocabulary=4000, seed=seed)
        words = list(FUNCTION_WORDS) + made_up_words(4000 - len(FUNCTION_WORDS), seed)
        rng = np.random.default_rng(seed)
        with open(w2v, "w") as f:
            f.write(f"{len(words)} {W2V_DIM}\n")
            for w in words:
                f.write(w + " " + " ".join(f"{x:.4f}" for x in rng.standard_normal(W2V_DIM)) + "\n")
        return f"{n} captions, {len(words)} word vectors"
    from pipeline.config import ExtractConfig
    from pipeline.text_job import run_text_extraction
    from vidfuse.config import load_config

    cfg = load_config(ExtractConfig, EXTRACT_CONFIG, [f"text.w2v.path={w2v}"], kind="extract")
    encoders = os.environ.get("VIDFUSE_SCALE_ENCODERS", "clip,bow,w2v").split(",")
    written = run_text_extraction(str(corpus / "captions.txt"), str(workdir / "features"), cfg, encoders,
                                  progress=False)
    return ", ".join(f"{k}: {v}" for k, v in written.items())


def run_stage(stage: str, n: int, workdir: Path, seed: int, epochs: int) -> str:
    """Runs one stage of the chain exactly as vidfuse.demo does; returns a one-line summary."""
    if stage in LAUNCHER_STAGES:
        return _launcher_stage(stage, n, workdir)
    if stage in TEXT_STAGES:
        return run_text_stage(stage, n, workdir, seed)
    p = _paths(workdir)
    if stage == "synth":
        ds = _dataset(workdir, n, seed)
        return f"{len(ds.video_ids)} videos"
    from pipeline.config import ExtractConfig
    from vidfuse.config import load_config

    extract_cfg = load_config(ExtractConfig, EXTRACT_CONFIG, kind="extract")
    ds = _dataset(workdir, n, seed) if stage in ("extract", "text", "train", "index") else None
    if stage == "extract":
        from pipeline.extract_job import run_extraction

        summary = run_extraction(str(ds.videos_dir), str(p["features"]), extract_cfg, EXTRACTORS, progress=False)
        return (f"{summary.line()}; launcher (outside the workers' run): {summary.launcher_seconds:.2f} s, "
                f"peak RSS before the run {summary.launcher_peak_rss / MiB:.0f} MiB")
    if stage == "text":
        from pipeline.text_job import run_text_extraction

        written = run_text_extraction(str(ds.captions_txt), str(p["features"]), extract_cfg, progress=False)
        return ", ".join(f"text/{k} +{v}" for k, v in written.items())
    if stage == "train":
        from fusion.trainer import TrainConfig
        from pipeline.training_set import run_training

        cfg = load_config(TrainConfig, HEAD, overrides=[f"epochs={epochs}"], kind="train")
        r = run_training(cfg, str(p["features"]), str(ds.captions_txt), str(p["run"]), progress=False)
        return f"best epoch {r.best_epoch}, val {r.metric_name} {r.best_metric:.3f}"
    if stage == "index":
        from index.run_index import build_index

        _, added = build_index(str(p["run"]), str(p["index"]), str(p["features"]), "test", str(ds.captions_txt))
        return f"{added} test videos indexed"
    if stage == "benchmark":
        from index.benchmark import run_benchmark

        t2v = run_benchmark(str(p["run"]), str(p["index"]), str(p["report"]), name=HEAD)["exact"]["t2v"]
        return f"t2v R@1 {t2v['R@1']:.1f}, R@10 {t2v['R@10']:.1f}"
    raise ValueError(f"unknown stage {stage!r} (one of {', '.join(STAGES)})")


def child_main(args: argparse.Namespace) -> int:
    sampler = TreeRSS()
    sampler.start()
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    t0, c0 = time.perf_counter(), time.process_time()
    summary = run_stage(args.stage, args.n, Path(args.workdir), args.seed, args.epochs)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    if profiler is not None:
        import pstats

        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(40)
    sampler.stop()
    result = {"stage": args.stage, "n": args.n, "seconds": seconds, "cpu_seconds": cpu_seconds, "summary": summary,
              "peak_rss": _status_kib("VmHWM") * 1024, "tree_peak_rss": sampler.peak_kib * 1024,
              "max_procs": sampler.max_procs}
    Path(args.result).write_text(json.dumps(result))
    return 0


# ---------------------------------------------------------------- driver

def _loadavg() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def run_child(stage: str, n: int, workdir: Path, seed: int, epochs: int, log) -> dict:
    result = workdir / f".scale-{stage}.json"
    cmd = [sys.executable, os.path.abspath(__file__), "--stage", stage, "--n", str(n),
           "--workdir", str(workdir), "--seed", str(seed), "--epochs", str(epochs), "--result", str(result)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"stage {stage} at N={n} failed (exit {proc.returncode}); see {log.name}")
    r = json.loads(result.read_text())
    r["child_seconds"] = wall  # process start + imports + work, as the driver saw it
    r["load"] = _loadavg()
    return r


def _fmt_cell(r: dict) -> str:
    return f"{r['seconds']:8.1f} s {r['peak_rss'] / MiB:6.0f} MiB ({r['tree_peak_rss'] / MiB:5.0f})"


def print_table(results: dict[int, dict[str, dict]], sizes: list[int]) -> None:
    lo, hi = sizes[0], sizes[-1]
    size_ratio = hi / lo
    cells = [f"N={n}: time, peak RSS (tree)" for n in sizes]
    header = ["stage", *cells, "time x", "RSS x", "tree x", "verdict"]
    rows = []
    for stage in STAGES + LAUNCHER_STAGES:
        if not all(stage in results[n] for n in sizes):
            continue
        a, b = results[lo][stage], results[hi][stage]
        t_ratio = b["seconds"] / max(a["seconds"], 1e-9)
        m_ratio = b["peak_rss"] / max(a["peak_rss"], 1)
        tm_ratio = b["tree_peak_rss"] / max(a["tree_peak_rss"], 1)
        limit = LINEAR_SLACK * size_ratio
        verdict = "linear or better" if t_ratio <= limit and m_ratio <= limit else "SUPER-LINEAR"
        if t_ratio > limit:
            verdict += " (time)"
        elif m_ratio > limit:
            verdict += " (memory)"
        rows.append([stage, *(_fmt_cell(results[n][stage]) for n in sizes),
                     f"{t_ratio:.2f}", f"{m_ratio:.2f}", f"{tm_ratio:.2f}", verdict])
    if not rows:
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cols: "| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |"  # noqa: E731
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))
    print(f"\nsize ratio {hi}/{lo} = {size_ratio:.1f}; linear-or-better verdict: time and RSS ratios "
          f"<= {LINEAR_SLACK * size_ratio:.1f}. Time = the stage's library call inside its own process "
          f"(lazy imports inside the call included); peak RSS = that process's VmHWM; tree = peak of RSS summed over it and "
          f"its children (Beam workers), sampled every 0.2 s.")
    print("\nper stage: summary, child wall time (start + imports + work), max processes, load average after")
    for n in sizes:
        for stage in STAGES + LAUNCHER_STAGES:
            r = results[n].get(stage)
            if r:
                print(f"  N={n:<5} {stage:<9} {r['summary']}  [child {r['child_seconds']:.1f} s, "
                      f"{r['max_procs']} proc, load {r['load']}]")


def text_driver_main(args: argparse.Namespace) -> int:
    """extract-text at each size in its own child; time and peak RSS, ratios to the smallest size."""
    sizes = sorted(int(s) for s in (args.sizes if args.sizes != "500,2000" else TEXT_SIZES).split(","))
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="vidfuse-text-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    os.environ["VIDFUSE_SCALE_ENCODERS"] = args.encoders  # the children read it
    print(f"text scale run: N captions = {sizes}, encoders {args.encoders}, work folder {root}")
    print(f"cores {os.cpu_count()}, load average at start {_loadavg()}", flush=True)
    rows = []
    try:
        with open(root / "stages.log", "a") as log:
            for n in sizes:
                workdir = root / f"c{n}"
                shutil.rmtree(workdir, ignore_errors=True)
                workdir.mkdir(parents=True)
                run_child("corpus", n, workdir, args.seed, args.epochs, log)
                r = run_child("captions", n, workdir, args.seed, args.epochs, log)
                rows.append(r)
                print(f"  N={n:<8} {r['seconds']:8.1f} s ({r['cpu_seconds']:.1f} s CPU)  "
                      f"peak RSS {r['peak_rss'] / MiB:6.0f} MiB  load {r['load']}"
                      f"  | {r['summary']}", flush=True)
                shutil.rmtree(workdir, ignore_errors=True)
    finally:
        if len(rows) >= 2:
            base = rows[0]
            print("\n| captions | time (s) | CPU (s) | peak RSS (MiB) | time ratio | N ratio | RSS ratio | load |")
            print("|---:|---:|---:|---:|---:|---:|---:|---|")
            for r in rows:
                print(f"| {r['n']} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['peak_rss'] / MiB:.0f} "
                      f"| {r['seconds'] / base['seconds']:.1f} "
                      f"| {r['n'] / base['n']:.0f} | {r['peak_rss'] / base['peak_rss']:.2f} | {r['load']} |")
        if not args.keep and not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\nload average at end {_loadavg()}")
    return 0


def driver_main(args: argparse.Namespace) -> int:
    if args.text:
        return text_driver_main(args)
    sizes = [100, 400] if args.quick else [int(s) for s in args.sizes.split(",")]
    sizes = sorted(sizes)
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="vidfuse-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / "stages.log"
    stages = [s for s in STAGES + LAUNCHER_STAGES if s in args.stages.split(",")]
    print(f"scale run: N = {sizes}, stages {', '.join(stages)}, work folder {root}, stage logs {log_path}")
    print(f"cores {os.cpu_count()}, load average at start {_loadavg()}", flush=True)
    results: dict[int, dict[str, dict]] = {}
    try:
        with open(log_path, "a") as log:
            for n in sizes:
                workdir = root / f"n{n}"
                if workdir.exists() and not args.reuse:
                    shutil.rmtree(workdir)  # a rerun must not reuse features: time would be zero
                workdir.mkdir(parents=True, exist_ok=True)
                results[n] = {}
                for stage in stages:
                    log.write(f"\n===== N={n} {stage}\n")
                    log.flush()
                    r = run_child(stage, n, workdir, args.seed, args.epochs, log)
                    results[n][stage] = r
                    print(f"  N={n:<5} {stage:<9} {r['seconds']:7.1f} s  peak RSS {r['peak_rss'] / MiB:5.0f} MiB"
                          f"  tree {r['tree_peak_rss'] / MiB:5.0f} MiB  load {r['load']}  | {r['summary']}",
                          flush=True)
    finally:
        done = [n for n in sizes if len(results.get(n, {})) == len(stages)]
        if len(done) >= 2:
            print()
            print_table(results, done)
        if not args.keep and not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\nload average at end {_loadavg()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="500,2000", help="comma-separated numbers of videos (default 500,2000)")
    ap.add_argument("--quick", action="store_true", help="N = 100, 400")
    ap.add_argument("--stages", default=",".join(STAGES),
                    help="comma-separated stages to run, in chain order (e.g. synth,extract for the launcher figures)")
    ap.add_argument("--workdir", help="work folder (default: a temporary folder, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    ap.add_argument("--reuse", action="store_true", help="reuse what a previous run left in --workdir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=3, help="training epochs (fixed so times compare)")
    # child mode
    ap.add_argument("--text", action="store_true", help=f"extract-text alone at --sizes captions (default {TEXT_SIZES})")
    ap.add_argument("--encoders", default="clip,bow,w2v", help="with --text: the text encoders run (default all)")
    ap.add_argument("--stage", choices=STAGES + TEXT_STAGES + LAUNCHER_STAGES, help="run one stage in this process (what the driver calls)")
    ap.add_argument("--n", type=int, help="number of videos (with --stage)")
    ap.add_argument("--result", help="JSON file the child writes its figures to (with --stage)")
    ap.add_argument("--profile", action="store_true", help="with --stage: cProfile the stage, top 40 to stderr")
    args = ap.parse_args(argv)
    if args.stage:
        if args.n is None or not args.workdir:
            ap.error("--stage needs --n and --workdir")
        if not args.result:
            args.result = os.devnull
        return child_main(args)
    return driver_main(args)


if __name__ == "__main__":
    sys.exit(main())
