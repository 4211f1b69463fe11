"""``vidfuse synth OUT --videos N``: write a procedural text-video dataset (see vidfuse.synth)."""

from __future__ import annotations

import argparse
import re
import time

from vidfuse.errors import VidfuseError


def parse_size(text: str) -> tuple[int, int]:
    """``"128x96"`` -> (128, 96)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise VidfuseError(f"--size must look like WxH (e.g. 128x96), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def register(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = subparsers.add_parser(
        name,
        help=help_text,
        description="Write h264 videos of coloured shapes that move, speed up, appear and vanish, "
        "with captions naming colour, shape and motion order (LAFF captions.txt and MSRVTT_data.json), "
        "train/val/test split files and synth.json. Video 2k+1 is video 2k played backwards, so "
        "appearance alone cannot tell their captions apart. Same seed -> same dataset; rerunning "
        "into the same OUT resumes.",
    )
    p.add_argument("out", metavar="OUT", help="output directory (created; may hold an interrupted run)")
    p.add_argument("--videos", "-n", type=int, required=True, metavar="N", help="number of videos (>= 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", default="128x96", metavar="WxH", help="frame size, even numbers (default 128x96)")
    p.add_argument("--captions-per-video", type=int, default=5, metavar="K", help="captions per video (default 5)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vidfuse.synth import generate_dataset

    width, height = parse_size(args.size)
    started = time.perf_counter()
    ds = generate_dataset(
        args.out,
        args.videos,
        args.seed,
        width=width,
        height=height,
        captions_per_video=args.captions_per_video,
        progress=not args.no_progress,
    )
    n_caps = sum(len(c) for c in ds.captions.values())
    counts = " / ".join(f"{len(ds.splits[s])} {s}" for s in ("train", "val", "test"))
    print(
        f"synth: {len(ds.video_ids)} videos ({counts}), {n_caps} captions, seed {args.seed}, "
        f"{width}x{height} in {time.perf_counter() - started:.1f}s -> {ds.videos_dir}, {ds.captions_txt}, "
        f"{ds.msrvtt_json.name}, {{train,val,test}}.txt"
    )
    return 0
