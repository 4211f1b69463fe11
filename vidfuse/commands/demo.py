"""``vidfuse demo``: the whole chain on a synthetic dataset, ending with the metrics table."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers, name: str, help_text: str) -> None:
    p = subparsers.add_parser(
        name,
        help=help_text,
        description=(
            "Generate a synthetic text-video dataset, fine-tune the tiny CLIP and X3D on its captions, "
            "extract their features with Beam, train LAFF, LAFF-ml, DLLFA, meanP and one single-feature "
            "head per video feature, index and benchmark them (average ties; chance and recall on the "
            "order-dependent captions shown). Rerunning into the same --workdir reuses what is done. "
            "Extra flags go to Beam."
        ),
    )
    p.add_argument("--workdir", default="vidfuse-demo", help="where everything is written (default ./vidfuse-demo)")
    p.add_argument("--videos", type=int, default=300, help="synthetic videos (default 300)")
    p.add_argument("--seed", type=int, default=0, help="dataset and training seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (redirected output never gets them)")
    p.set_defaults(func=run, passes_extra_args=True)


def run(args: argparse.Namespace) -> int:
    from vidfuse.demo import DemoSettings, run_demo

    run_demo(DemoSettings(workdir=Path(args.workdir), videos=args.videos, seed=args.seed,
                          beam_args=args.extra_args, progress=not args.no_progress))
    return 0
