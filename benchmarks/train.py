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

Part 2, quality: on the synthetic dataset with the tiny random-init extractors (clip, x3d;
text clip, bow) the tiny configs train over ``--seeds`` seeds; the table shows mean ± std of
the best-epoch val t2v R@1/5/10 (what `vidfuse train` reports: the epoch is chosen on val)
and of the same checkpoint's test t2v R@1/5/10 (held out), with chance and a control
(tiny_laff_ml trained on train captions shuffled across videos). Rows: single features
(video clip/x3d x text clip/bow), meanP, concat, LAFF, LAFF-ml, DLLFA.

    python benchmarks/train.py                       # both parts (~25 min on 2 shared cores)
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


SINGLE = ("head.type=single", "head.single.dim=64", "head.single.loss.hardest=false")
QUALITY_ROWS = [
    ("single clip / text clip", "tiny_laff", SINGLE + ("head.single.video_feature=clip", "head.single.text_feature=clip")),
    ("single clip / text bow", "tiny_laff", SINGLE + ("head.single.video_feature=clip", "head.single.text_feature=bow")),
    ("single x3d / text clip", "tiny_laff", SINGLE + ("head.single.video_feature=x3d", "head.single.text_feature=clip")),
    ("single x3d / text bow", "tiny_laff", SINGLE + ("head.single.video_feature=x3d", "head.single.text_feature=bow")),
    ("meanP", "tiny_meanp", ()),
    ("concat", "tiny_concat", ()),
    ("LAFF", "tiny_laff", ()),
    ("LAFF-ml", "tiny_laff_ml", ()),
    ("DLLFA", "tiny_dllfa", ()),
    ("control: LAFF-ml, shuffled captions", "tiny_laff_ml", ()),
]


def synthetic_features(workdir: Path, videos: int) -> tuple[Path, Path]:
    """The demo's data stages (resumable): synth -> extract clip,x3d -> extract-text clip,bow."""
    from pipeline.config import ExtractConfig
    from pipeline.extract_job import run_extraction
    from pipeline.text_job import run_text_extraction
    from vidfuse.synth import generate_dataset

    cfg = load_config(ExtractConfig, "tiny", kind="extract")
    t0 = time.perf_counter()
    dataset = generate_dataset(workdir / "data", videos, 0, progress=False)
    features = workdir / "features"
    run_extraction(str(dataset.videos_dir), str(features), cfg, ["clip", "x3d"], progress=False)
    run_text_extraction(str(dataset.captions_txt), str(features), cfg, ["clip", "bow"], progress=False)
    print(f"  synthetic set: {videos} videos, features ready in {time.perf_counter() - t0:.0f} s", flush=True)
    return features, dataset.captions_txt


def quality(workdir: Path, videos: int, seeds: int) -> None:
    from fusion.checkpoint import load_run
    from fusion.encode import similarity_matrix
    from index.metrics import t2v_v2t_metrics
    from pipeline.training_set import Corpus, build_train_data, load_split

    features, captions = synthetic_features(workdir, videos)
    corpus = Corpus.read(str(captions))
    n_val, n_test = len(corpus.split_videos("val")), len(corpus.split_videos("test"))
    ks = ("R@1", "R@5", "R@10")
    print(f"\n  val: {n_val} videos, test: {n_test} videos; mean ± std over {seeds} seeds; "
          f"val = best epoch (chosen on val), test = that checkpoint\n")
    header = "| model | " + " | ".join(f"val {k}" for k in ks) + " | " + " | ".join(f"test {k}" for k in ks) + " |"
    print(header)
    print("|:---|" + "---:|" * 6)
    chance = [100 * min(1, int(k[2:]) / n) for n in (n_val, n_test) for k in ks]
    print("| chance | " + " | ".join(f"{c:.1f}" for c in chance) + " |", flush=True)
    for row, (label, config, overrides) in enumerate(QUALITY_ROWS):
        values = []
        for seed in range(seeds):
            cfg = load_config(TrainConfig, config, [*overrides, f"seed={seed}"], kind="train")
            data, _ = build_train_data(str(features), corpus, cfg.head)
            if label.startswith("control"):
                cv = data.caption_video.copy()
                cv[data.train_captions] = np.random.default_rng(seed).permutation(cv[data.train_captions])
                data.caption_video = cv
            out = workdir / "runs" / f"row{row}-{config}-seed{seed}"
            result = trainer.train(cfg, data, out, resume=False, progress=False)
            head, _, _ = load_run(out)
            test = load_split(str(features), corpus, "test", cfg.head)
            test_m = t2v_v2t_metrics(similarity_matrix(head, test.texts, test.videos), test.caption_video)
            values.append([result.best_val["t2v"][k] for k in ks] + [test_m["t2v"][k] for k in ks])
        v = np.asarray(values)
        cells = [f"{m:.1f} ± {s:.1f}" for m, s in zip(v.mean(0), v.std(0))]
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["throughput", "quality"], default=None)
    p.add_argument("--steps", type=int, default=50, help="training steps per head (throughput)")
    p.add_argument("--videos", type=int, default=300, help="synthetic videos (quality; the demo's default)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--workdir", default=None, help="keep/reuse the synthetic set here (default: a temp dir)")
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
        print(f"\n== quality: tiny configs on the synthetic set ({args.videos} videos, tiny random-init extractors)")
        if args.workdir:
            quality(Path(args.workdir), args.videos, args.seeds)
        else:
            with tempfile.TemporaryDirectory(prefix="vidfuse-train-quality-") as tmp:
                quality(Path(tmp), args.videos, args.seeds)


if __name__ == "__main__":
    main()
