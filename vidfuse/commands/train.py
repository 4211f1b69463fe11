"""``vidfuse train --features DIR --captions FILE --config NAME --out RUN``: fit a fusion head."""

from __future__ import annotations

import argparse

from vidfuse.commands.common import add_training_run_args, no_new_folder_if_refused


def register(subparsers, name: str, help_text: str) -> None:
    p = subparsers.add_parser(
        name,
        help=help_text,
        description=(
            "Train a fusion head on feature shards. Split files (train/val/test.txt) are found "
            "beside CAPTIONS unless --splits names their folder. Rerunning into the same --out "
            "resumes from its last epoch."
        ),
    )
    p.add_argument("--features", required=True, help="features folder written by extract and extract-text")
    add_training_run_args(p, "laff", "run folder (checkpoint.pt, config.yaml, metrics.jsonl)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fusion.trainer import TrainConfig, resolve_config
    from pipeline.training_set import run_training
    from vidfuse.config import load_config

    overrides = list(args.overrides) + ([f"device={args.device}"] if args.device else [])
    cfg = load_config(TrainConfig, args.config, overrides, kind="train",
                      check=resolve_config)
    with no_new_folder_if_refused(args.out):
        result = run_training(cfg, args.features, args.captions, args.out, args.splits,
                              resume=not args.fresh, progress=not args.no_progress)
    t2v = result.best_val.get("t2v", {})
    summary = ", ".join(f"{k} {t2v[k]:.1f}" for k in ("R@1", "R@5", "R@10") if k in t2v)
    print(
        f"train: {cfg.head.type} best epoch {result.best_epoch}/{result.epochs_run} "
        f"({result.metric_name} {result.best_metric:.4f}; val t2v {summary}) -> {args.out}"
    )
    return 0
