"""Per-video cost of the extractors, and our torch preprocessing vs torchvision's, side by side.

1. For each extractor of a config (default: ``configs/extract/tiny.yaml``, random weights),
   the time per video of ``preprocess`` (uint8 frames -> units) and of ``embed`` (units of
   ``--batch-videos`` videos at once, divided per video), at the frame size of the input.
2. ``FrameTransform`` (uint8 tensor resize of the shorter side with antialias, centre crop,
   normalise) vs the PIL pipeline the models were trained with (torchvision ``Resize`` +
   ``CenterCrop`` + ``ToTensor`` + ``Normalize`` on PIL images, as ``open_clip.image_transform``
   builds for eval), on the same frames; outputs compared too (max abs difference, in
   normalised units, and in grey levels).

Each measurement keeps its best of ``--rounds`` (timeit's rule: other load on a shared machine
only ever adds time); wall clock and this process's CPU time are both shown.

    python benchmarks/extractors.py [--config tiny --size 320x240 --rounds 5 --batch-videos 8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from extractors.preprocess import FrameTransform  # noqa: E402
from extractors.registry import build_extractor  # noqa: E402
from pipeline.config import ExtractConfig  # noqa: E402
from vidfuse.config import load_config  # noqa: E402


def best(fn, rounds: int) -> tuple[float, float]:
    """(best wall seconds, best CPU seconds) of ``fn()`` over ``rounds`` runs."""
    walls, cpus = [], []
    for _ in range(rounds):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus)


def pil_reference(frames: np.ndarray, t: FrameTransform) -> torch.Tensor:
    """The per-frame PIL pipeline of open_clip's eval transform, with ``t``'s settings."""
    from PIL import Image
    from torchvision import transforms as T

    mode = T.InterpolationMode.BICUBIC if t.interpolation == "bicubic" else T.InterpolationMode.BILINEAR
    pipeline = T.Compose([T.Resize(t.resize, interpolation=mode), T.CenterCrop(t.crop), T.ToTensor(), T.Normalize(t.mean, t.std)])
    return torch.stack([pipeline(Image.fromarray(f)) for f in frames])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--size", default="320x240", help="frame WxH")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-videos", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.size.split("x"))
    cfg = load_config(ExtractConfig, args.config, kind="extract")
    rng = np.random.default_rng(0)

    print(f"config {args.config}, frames {w}x{h}, {args.threads} threads, best of {args.rounds}")
    print(f"{'extractor':<10}{'dim':>6}{'units/video':>13}{'preprocess ms':>15}{'embed ms':>10}{'total ms/video':>16}{'(cpu ms)':>10}")
    for name, settings in cfg.extractors.items():
        ex = build_extractor(name, settings, device="cpu")
        n = ex.sample_indices(300).size
        videos = [rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8) for _ in range(args.batch_videos)]
        pre_w, pre_c = best(lambda: [ex.preprocess(v) for v in videos], args.rounds)
        units = torch.cat([ex.preprocess(v) for v in videos])
        ex.embed(units)  # warm-up (first call allocates)
        emb_w, emb_c = best(lambda: ex.embed(units), args.rounds)
        per = args.batch_videos
        print(
            f"{name:<10}{ex.dim:>6}{units.shape[0] // per:>13}{1000 * pre_w / per:>15.2f}{1000 * emb_w / per:>10.2f}"
            f"{1000 * (pre_w + emb_w) / per:>16.2f}{1000 * (pre_c + emb_c) / per:>10.2f}"
        )

    print("\npreprocess: FrameTransform vs the PIL pipeline (same frames, same settings)")
    print(f"{'transform':<26}{'frames':>7}{'ours ms':>9}{'PIL ms':>8}{'PIL/ours':>10}{'max|diff|':>11}{'grey levels':>13}")
    for t in (
        FrameTransform(224, 224, (0.481, 0.458, 0.408), (0.269, 0.261, 0.276), "bicubic"),
        FrameTransform(256, 224, (0.432, 0.395, 0.376), (0.228, 0.221, 0.217), "bilinear"),
        FrameTransform(312, 312, (0.45,) * 3, (0.225,) * 3, "bilinear"),
    ):
        frames = rng.integers(0, 256, size=(16, h, w, 3), dtype=np.uint8)
        ours_w, _ = best(lambda: t(frames), args.rounds)
        pil_w, _ = best(lambda: pil_reference(frames, t), args.rounds)
        diff = (t(frames) - pil_reference(frames, t)).abs().amax(dim=(0, 2, 3))
        grey = float((diff * torch.tensor(t.std) * 255).max())
        label = f"{t.interpolation} {t.resize}->{t.crop}"
        print(f"{label:<26}{16:>7}{1000 * ours_w:>9.1f}{1000 * pil_w:>8.1f}{pil_w / ours_w:>10.2f}{float(diff.max()):>11.2e}{grey:>13.2f}")


if __name__ == "__main__":
    main()
