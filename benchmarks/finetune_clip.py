"""Fine-tuning throughput of ``vidfuse finetune-clip`` (frames per second), side by side.

Everything goes through the real training loop (``fusion.clip_ft.finetune_clip``): frames
per second = frames trained on / seconds of the epoch's training (decode in the DataLoader,
forward, backward, optimiser), the fastest epoch after the first (start-up; other load on
a shared machine only ever adds time). Beside it, the decode +
preprocess alone (``VideoFrames``, what the DataLoader workers do) in frames per second, so
the share of the input pipeline is visible.

- CPU: the tiny random-init CLIP (``configs/train/tiny_clip_ft.yaml``) on a synthetic set,
  with DataLoader ``num_workers`` 0 and 1 (decoding overlapped with the step).
- GPU (when CUDA is present): ViT-B/32 at 224 px with random weights (``pretrained: null``:
  the speed of the architecture; no weights are downloaded), batch 64 videos x 8 frames,
  fp32 vs AMP (bf16), ``num_workers`` 8. Otherwise it prints that it was skipped.

    python benchmarks/finetune_clip.py [--videos 64 --epochs 3 --workdir DIR]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fusion.clip_ft import (ClipFtConfig, VideoFrames, build_start_model, finetune_clip,  # noqa: E402
                            load_clip_ft_data)
from vidfuse.config import load_config  # noqa: E402
from vidfuse.synth import generate_dataset  # noqa: E402


def train_fps(cfg: ClipFtConfig, data, out: Path) -> float:
    """Frames per second of the fastest training epoch after the first (start-up) of a fresh run."""
    result = finetune_clip(cfg, data, out, resume=False, progress=False)
    return max(r["frames"] / r["train_s"] for r in result.history if r["epoch"] >= 2)


def decode_fps(cfg: ClipFtConfig, data, rounds: int = 3) -> float:
    """Frames per second of decode + preprocess alone, in this process (best of ``rounds``)."""
    clip = build_start_model("clip", cfg.clip)
    ds = VideoFrames(data.train.paths, cfg.clip.sampling, clip.transform, cfg.decode, cfg.seed, epoch=1)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        frames = sum(ds[i][1].shape[0] for i in range(len(ds)))
        best = min(best, time.perf_counter() - t0)
    return frames / best


def dataset(root: Path, n: int, size: int):
    ds = generate_dataset(root / f"synth{n}_{size}", n, 0, width=size, height=size * 3 // 4 // 2 * 2,
                          duration=(2.0, 3.0), progress=False)
    return load_clip_ft_data(str(ds.videos_dir), str(ds.captions_txt))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=64, help="synthetic videos (70%% train)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--workdir", default=None, help="keep the synthetic set and runs here (default: a temp dir)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench_clipft_"))
    common = [f"epochs={args.epochs}", "validate_before=false", "early_stop=0"]

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    data = dataset(root, args.videos, 128)
    cfg = load_config(ClipFtConfig, "tiny_clip_ft", common, kind="train")
    print(f"CPU, tiny CLIP (vidfuse-tiny, 64 px), {len(data.train)} train videos x 8 frames, "
          f"batch {cfg.batch_size} videos:")
    dec = decode_fps(cfg, data)
    fps = {w: train_fps(load_config(ClipFtConfig, "tiny_clip_ft", common + [f"num_workers={w}"], kind="train"),
                        data, root / f"cpu_w{w}") for w in (0, 1)}
    print(f"  decode + preprocess only      {dec:9.1f} frames/s")
    print(f"  fine-tuning, num_workers=0    {fps[0]:9.1f} frames/s  ({fps[0] / dec:.2f} x decode alone)")
    print(f"  fine-tuning, num_workers=1    {fps[1]:9.1f} frames/s  ({fps[1] / fps[0]:.2f} x num_workers=0)")

    if not torch.cuda.is_available():
        print("GPU (ViT-B/32, fp32 vs AMP): skipped, no CUDA device")
        return
    gpu = [f"epochs={args.epochs}", "validate_before=false", "early_stop=0", "device=cuda", "clip.pretrained=null",
           "num_workers=8", "batch_size=64"]
    big = dataset(root, max(args.videos, 256), 320)
    print(f"GPU {torch.cuda.get_device_name()}, ViT-B/32 (random weights), {len(big.train)} train videos x 8 frames, "
          f"batch 64 videos, num_workers 8:")
    fp32 = train_fps(load_config(ClipFtConfig, "clip_ft", gpu + ["amp=false"], kind="train"), big, root / "gpu_fp32")
    amp = train_fps(load_config(ClipFtConfig, "clip_ft", gpu + ["amp=true"], kind="train"), big, root / "gpu_amp")
    print(f"  fine-tuning, fp32             {fp32:9.1f} frames/s")
    print(f"  fine-tuning, AMP bf16         {amp:9.1f} frames/s  ({amp / fp32:.2f} x fp32)")


if __name__ == "__main__":
    main()
