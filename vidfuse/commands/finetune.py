"""``vidfuse finetune --videos DIR --captions FILE --config clip_ft --out RUN``: fine-tune a video extractor.

``vidfuse finetune-clip`` is the same command (its name from when only CLIP was fine-tuned).
"""

from __future__ import annotations

import argparse

from vidfuse.commands.common import add_training_run_args, no_new_folder_if_refused
from vidfuse.errors import ConfigError


def register(subparsers, name: str, help_text: str) -> None:
    p = subparsers.add_parser(
        name,
        help=help_text,
        description=(
            "Fine-tune a video extractor end to end on the train split's captions (LAFF's clip-ft for "
            "extractor: clip; any other extractor, e.g. x3d, is trained against a CLIP text tower the same "
            "way): mean of the extractor's frame or clip embeddings vs the caption embedding. The best "
            "validation epoch is written to RUN/<extractor>_ft.pt, which the extractor loads "
            "(extractors.<extractor>.pretrained: RUN/<extractor>_ft.pt; RUN/extract_<extractor>_ft.yaml is "
            "such an extraction config). Split files (train/val/test.txt) are found beside CAPTIONS unless "
            "--splits names their folder. Rerunning into the same --out resumes from its last epoch."
        ),
    )
    p.add_argument("--videos", required=True, help="folder of videos (searched recursively; ids as extract names them)")
    add_training_run_args(p, "clip_ft", "run folder (<extractor>_ft.pt, config.yaml, metrics.jsonl, last.pt)")
    p.add_argument("--num-workers", type=int, default=None, help="override the config's DataLoader decode workers")
    p.set_defaults(func=run)


def check_finetune_values(cfg) -> None:
    """resolve_finetune_config's checks, then the values it leaves to torch (lr, device, workers, backend)."""
    from fusion.config import check_optim_values, check_run_settings
    from fusion.finetune import resolve_finetune_config
    from pipeline.config import check_decode_config

    resolved = resolve_finetune_config(cfg)
    if resolved.loss.margin < 0:
        raise ConfigError(f"loss.margin must be >= 0, got {resolved.loss.margin!r}")
    check_optim_values(resolved.optim)
    check_run_settings(resolved)
    check_decode_config(resolved.decode)


check_clip_ft_values = check_finetune_values


def run(args: argparse.Namespace) -> int:
    from fusion.finetune import FinetuneConfig, extract_config_name, run_finetune
    from vidfuse.config import load_config

    overrides = list(args.overrides)
    overrides += [f"device={args.device}"] if args.device else []
    overrides += [f"num_workers={args.num_workers}"] if args.num_workers is not None else []
    cfg = load_config(FinetuneConfig, args.config, overrides, kind="train", check=check_finetune_values)
    with no_new_folder_if_refused(args.out):
        result = run_finetune(cfg, args.videos, args.captions, args.out, args.splits,
                              resume=not args.fresh, progress=not args.no_progress)
    t2v, before = result.best_val.get("t2v", {}), result.baseline_val.get("t2v", {})
    summary = ", ".join(f"{k} {t2v[k]:.1f}" for k in ("R@1", "R@5", "R@10") if k in t2v)
    if "R@1" in before:
        summary += f"; before fine-tuning R@1 {before['R@1']:.1f}"
    skipped = f", {len(result.failed)} undecodable videos skipped" if result.failed else ""
    print(
        f"{args.command}: best epoch {result.best_epoch}/{result.epochs_run} "
        f"({result.metric_name} {result.best_metric:.4f}; val t2v {summary}{skipped}) -> {result.checkpoint}"
    )
    extract_cfg = result.run_dir / extract_config_name(cfg.extractor)
    line = (f"{cfg.extractor}-ft features: vidfuse extract {args.videos} --out FEATURES --config {extract_cfg} "
            f"--extractors {cfg.extractor}")
    if cfg.extractor == "clip":
        line += f" && vidfuse extract-text {args.captions} --out FEATURES --config {extract_cfg} --encoders clip"
    print(line)
    return 0
