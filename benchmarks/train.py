"""Fusion-head training: throughput at MSR-VTT scale, and what each head learns on the synthetic set.

Part 1, throughput: samples/s (captions per second) of ``fusion.trainer.train`` for the
published recipes ``configs/train/{laff,laff_ml,dllfa,meanp,concat}.yaml`` on random
features of MSR-VTT's size: 10k videos (clip 512 with 12 frames, x3d 2048, ircsn 2048),
200k captions (clip 512, w2v 500, bow 7.8k, GRU token ids over a 7.8k vocabulary). The bow
matrix (6 GB as float32) is a disk-backed ``np.memmap``, as a user would hold it; only the
rows training touches are ever written. Each head trains one epoch of ``--steps`` batches
(its own batch size) with no validation; checkpoint writes are stubbed out (disk speed is
not training speed), and head construction and the first step (warm-up) are left out: samples/s = (steps - 1) * batch / (time from the second batch to the end of the
epoch), by wall clock and per CPU-second of this process (which other load on a shared
machine hardly inflates). CPU always; CUDA when torch sees a GPU, else a line saying it was
skipped.

Part 2, quality: the demo chain (``vidfuse demo``: synthetic set, clip-ft and x3d-ft, then
every head) once per seed (``--seeds``; the seed draws the dataset, the fine-tuning and the
heads); the table shows mean ± std of the held-out test metrics with average ties (exactly
tied videos earn no credit), t2v R@1 on the order-dependent captions and with optimistic
ties, chance, and a control (tiny_laff trained on train captions shuffled across videos),
then whether each target of the demo is met.

    python benchmarks/train.py                       # both parts
    python benchmarks/train.py --only throughput --steps 20
    python benchmarks/train.py --only quality --videos 300 --workdir /tmp/synth300 --seeds 3
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import fusion.trainer as trainer  # noqa: E402
from fusion.data import FeatureBank, TrainData  # noqa: E402
from fusion.trainer import TrainConfig  # noqa: E402
from vidfuse.config import load_config  # noqa: E402

HEADS = ("laff", "laff_ml", "dllfa", "meanp", "concat")
MSRVTT = dict(videos=10_000, captions=200_000, frames=12, clip=512, x3d=2048, ircsn=2048, w2v=500, vocab=7_800,
              words=(6, 16))


# ----------------------------------------------------------------------------- part 1


def msrvtt_sized_data(train_captions: int, folder: str, seed: int = 0) -> TrainData:
    """Random banks of MSR-VTT's size; the first ``train_captions`` of a permutation train."""
    s = MSRVTT
    rng = np.random.default_rng(seed)

    def normal(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    nv, nc = s["videos"], s["captions"]
    offsets = np.arange(0, (nv + 1) * s["frames"], s["frames"], dtype=np.int64)
    videos = FeatureBank(
        vectors={"clip": normal(nv, s["clip"]), "x3d": normal(nv, s["x3d"]), "ircsn": normal(nv, s["ircsn"])},
        frames={"clip": (normal(nv * s["frames"], s["clip"]), offsets)},
    )
    train = np.sort(rng.permutation(nc)[:train_captions])
    bow = np.memmap(os.path.join(folder, "bow.f32"), dtype=np.float32, mode="w+", shape=(nc, s["vocab"]))
    for start in range(0, len(train), 4096):  # only the rows training reads hold data; the rest stay sparse
        rows = train[start:start + 4096]
        bow[rows] = (rng.random((len(rows), s["vocab"]), dtype=np.float32) < 10 / s["vocab"]).astype(np.float32)
    lengths = rng.integers(*s["words"], nc)
    token_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    texts = FeatureBank(
        vectors={"clip": normal(nc, s["clip"]), "w2v": normal(nc, s["w2v"]), "bow": bow},
        tokens=(rng.integers(1, s["vocab"] + 1, token_offsets[-1]).astype(np.int64), token_offsets),
    )
    return TrainData(videos=videos, texts=texts, caption_video=np.arange(nc, dtype=np.int64) % nv,
                     train_captions=train, val_captions=np.zeros(0, np.int64), video_ids=[f"video{i}" for i in range(nv)],
                     caption_ids=[f"video{i % nv}#{i // nv}" for i in range(nc)], vocab_size=s["vocab"] + 1)


def _timed_steps(cfg: TrainConfig, data: TrainData, out: str) -> tuple[float, float]:
    """(wall, CPU) seconds of the training steps after the first: from the second batch's
    collation to the end of ``train`` (no validation, checkpoint writes stubbed: nothing
    else follows). CPU time is this process's (all its threads): other load on a shared
    machine inflates wall time, hardly CPU time."""
    stamps: list[tuple[float, float]] = []
    getitem = trainer._Batches.__getitem__

    def stamped(self, i):
        stamps.append((time.perf_counter(), time.process_time()))
        return getitem(self, i)

    trainer._Batches.__getitem__ = stamped
    try:
        trainer.train(cfg, data, out, resume=False, progress=False)
    finally:
        trainer._Batches.__getitem__ = getitem
    return time.perf_counter() - stamps[1][0], time.process_time() - stamps[1][1]


def throughput(steps: int, device: str) -> list[tuple[str, int, float, float]]:
    """(head, batch size, samples per wall second, samples per CPU second) per head on ``device``."""
    configs = {h: load_config(TrainConfig, h, ["epochs=1", f"device={device}"], kind="train") for h in HEADS}
    batch = max(c.batch_size for c in configs.values())
    rows = []
    with tempfile.TemporaryDirectory(prefix="vidfuse-train-bench-") as tmp:
        t0 = time.perf_counter()
        data = msrvtt_sized_data(steps * batch, tmp)
        print(f"  random MSR-VTT-sized banks built in {time.perf_counter() - t0:.0f} s", flush=True)
        print(f"  {'device':6s} {'head':8s} {'batch':>5s} {'samples/s':>10s} {'samples/CPU-s':>14s} {'ms/step':>8s}")
        pool = data.train_captions
        for head, cfg in configs.items():
            b = cfg.batch_size
            data.train_captions = pool[: steps * b]
            wall, cpu = _timed_steps(cfg, data, os.path.join(tmp, head))
            n = (steps - 1) * b
            rows.append((head, b, n / wall, n / cpu))
            print(f"  {device:6s} {head:8s} {b:5d} {n / wall:10.0f} {n / cpu:14.0f} {wall / (steps - 1) * 1000:8.0f}",
                  flush=True)
    return rows


# ----------------------------------------------------------------------------- part 2


def shuffled_control(workdir: Path, config: str, seed: int, ties: str) -> dict:
    """``config`` trained on the demo's features with train captions shuffled across videos: test t2v."""
    from fusion.checkpoint import load_run
    from fusion.encode import similarity_matrix
    from index.metrics import t2v_v2t_metrics
    from pipeline.training_set import Corpus, build_train_data, load_split

    features, corpus = workdir / "features", Corpus.read(str(workdir / "data" / "captions.txt"))
    cfg = load_config(TrainConfig, config, [f"seed={seed}"], kind="train")
    data, _ = build_train_data(str(features), corpus, cfg.head)
    cv = data.caption_video.copy()
    cv[data.train_captions] = np.random.default_rng(seed).permutation(cv[data.train_captions])
    data.caption_video = cv
    out = workdir / "runs" / f"control_{config}_seed{seed}"
    if not (out / "checkpoint.pt").is_file():
        trainer.train(cfg, data, out, resume=False, progress=False)
    head, _, _ = load_run(out)
    test = load_split(str(features), corpus, "test", cfg.head)
    return t2v_v2t_metrics(similarity_matrix(head, test.texts, test.videos), test.caption_video, ties=ties)["t2v"]


def quality(workdir: Path, videos: int, seeds: int, only_seed: Optional[int] = None) -> None:
    """The demo chain (fine-tuned extractors, every head) once per seed; its test table, mean ± std."""
    import json

    from vidfuse.demo import DEMO_TIES, DemoSettings, run_demo

    per_seed = []
    for seed in range(seeds) if only_seed is None else [only_seed]:
        root = workdir / f"seed{seed}"
        t0, c0 = time.perf_counter(), time.process_time()
        report = run_demo(DemoSettings(workdir=root, videos=videos, seed=seed, progress=False),
                          console=_quiet_console())
        results = json.loads((report / "summary.json").read_text())
        results["control: laff, shuffled captions"] = {"exact": {"t2v": shuffled_control(root, "tiny_laff", seed,
                                                                                          DEMO_TIES)}}
        per_seed.append(results)
        print(f"  seed {seed}: demo {time.perf_counter() - t0:.0f} s wall, {time.process_time() - c0:.0f} s CPU "
              f"(this process)", flush=True)
    if only_seed is None:  # with it, run folders stay under --workdir: a later run without it reuses them
        print_quality(per_seed)


def print_quality(per_seed: list[dict]) -> None:
    """Mean ± std over seeds of the demo's test metrics, chance, and whether each target is met."""
    from vidfuse.demo import DEMO_TIES, ORDER_SUBSET

    seeds = len(per_seed)
    first = per_seed[0]["laff"]
    chance = first["chance"]  # run_benchmark's chance level of the split
    print(f"\n  test: {first['num_videos']} videos, {first['num_captions']} captions, {DEMO_TIES} ties; "
          f"mean ± std over {seeds} seeds (dataset, fine-tuning and heads all seeded)\n")
    cols = [("t2v R@1", lambda r: r["exact"]["t2v"]["R@1"]), ("t2v R@5", lambda r: r["exact"]["t2v"]["R@5"]),
            ("t2v R@10", lambda r: r["exact"]["t2v"]["R@10"]), ("v2t R@1", lambda r: r["exact"]["v2t"]["R@1"]),
            (f"{ORDER_SUBSET} t2v R@1", lambda r: r["subsets"][ORDER_SUBSET]["t2v"]["R@1"]),
            ("t2v R@1 optimistic", lambda r: r.get("optimistic_t2v", {}).get("R@1"))]
    print("| model | " + " | ".join(c for c, _ in cols) + " |")
    print("|:---|" + "---:|" * len(cols))
    print(f"| chance | {chance['t2v']['R@1']:.1f} | {chance['t2v']['R@5']:.1f} | {chance['t2v']['R@10']:.1f} | "
          f"{chance['v2t']['R@1']:.1f} | {chance['t2v']['R@1']:.1f} | {chance['t2v']['R@1']:.1f} |")
    stats = {}
    for name in per_seed[0]:
        cells = []
        for col, get in cols:
            try:
                v = np.array([get(s[name]) for s in per_seed], dtype=float)
            except (KeyError, TypeError):
                v = np.array([np.nan])
            if np.isnan(v).any():
                cells.append("–")
                continue
            stats[(name, col)] = (v.mean(), v.std())
            cells.append(f"{v.mean():.1f} ± {v.std():.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)

    def m(name, col="t2v R@1"):
        return stats[(name, col)]

    best_single = max((n for n in per_seed[0] if n.startswith("single_")), key=lambda n: m(n)[0])
    laff_best = max(("laff", "laff_ml"), key=lambda n: m(n)[0])
    order = f"{ORDER_SUBSET} t2v R@1"
    checks = [
        (f"best LAFF head ({laff_best}) t2v R@1 >= 10x chance", m(laff_best)[0], 10 * chance["t2v"]["R@1"]),
        (f"laff t2v R@1 - best single ({best_single}) > laff's seed std", m("laff")[0] - m(best_single)[0],
         m("laff")[1]),
        ("laff_ml t2v R@1 >= laff", m("laff_ml")[0], m("laff")[0]),
        ("dllfa - meanp on order-dependent t2v R@1 > dllfa's seed std", m("dllfa", order)[0] - m("meanp", order)[0],
         m("dllfa", order)[1]),
    ]
    print()
    for label, value, bound in checks:
        ok = value >= bound if ">=" in label else value > bound
        print(f"  {'met' if ok else 'NOT met'}: {label}: {value:.1f} vs {bound:.1f}")


def _quiet_console():
    from rich.console import Console

    return Console(quiet=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["throughput", "quality"], default=None)
    p.add_argument("--steps", type=int, default=50, help="training steps per head (throughput)")
    p.add_argument("--videos", type=int, default=300, help="synthetic videos (quality; the demo's default)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--workdir", default=None, help="keep/reuse the demo runs here (default: a temp dir)")
    p.add_argument("--only-seed", type=int, default=None, help="run the demo of this seed only (quality; to run "
                   "seeds in parallel processes into one --workdir, then once more without it for the table)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {os.cpu_count()} cores")

    if args.only in (None, "throughput"):
        print(f"\n== throughput: published configs, MSR-VTT-sized random features, {args.steps} steps per head")
        trainer.save_atomic = lambda obj, path: None  # checkpoint writes are not training throughput
        throughput(args.steps, "cpu")
        if torch.cuda.is_available():
            throughput(args.steps, "cuda")
        else:
            print("  cuda: skipped (torch sees no GPU on this machine)")
        import fusion.checkpoint as checkpoint

        trainer.save_atomic = checkpoint.save_atomic

    if args.only in (None, "quality"):
        from vidfuse.demo import DEMO_FRAME_SIZE

        print(f"\n== quality: tiny configs on the synthetic set ({args.videos} videos of "
              f"{DEMO_FRAME_SIZE[0]}x{DEMO_FRAME_SIZE[1]}, tiny extractors fine-tuned from random weights)")
        if args.workdir:
            quality(Path(args.workdir), args.videos, args.seeds, args.only_seed)
        else:
            with tempfile.TemporaryDirectory(prefix="vidfuse-train-quality-") as tmp:
                quality(Path(tmp), args.videos, args.seeds)


if __name__ == "__main__":
    main()
