"""Run directory files: atomic checkpoint writes, loading a trained head, feature-dim checks.

``checkpoint.pt`` (best epoch): ``model`` state, ``config`` (TrainConfig as a dict),
``video_dims`` / ``text_dims`` (the features the head reads), ``vocab_size``, ``epoch``,
``metric_name``, ``best_metric``, ``val`` (that epoch's validation metrics).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch

from fusion.data import MASK_SUFFIX, TOKENS, FeatureBank, feature_dims
from fusion.dims import CheckpointError, check_dims, check_vocab  # noqa: F401  (re-exported)
from fusion.factory import build_head
from fusion.heads import RetrievalHead
from vidfuse.config import merge_config

CHECKPOINT = "checkpoint.pt"
LAST = "last.pt"


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary name beside ``path``, then rename: never a half file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    """A vidfuse checkpoint (a dict with at least ``model`` and ``config``), or a CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # corrupt/truncated file: say which
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path} (truncated or not a checkpoint?): {reason}{_resume_hint(path)}"
        ) from None
    missing = [k for k in ("model", "config") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        what = f"no {missing}" if isinstance(ckpt, dict) else f"a {type(ckpt).__name__}, not a dict"
        raise CheckpointError(f"{path} is not a vidfuse checkpoint ({what}){_resume_hint(path)}")
    return ckpt


def _resume_hint(path: Path) -> str:
    """What to do when the resume state of a run is unusable (the run's other files stay as they are)."""
    return f"; rerun with --fresh to start {path.parent} over" if path.name == LAST else ""


def unfinished_training(run_dir: str | Path) -> Optional[str]:
    """Why ``run_dir`` holds a training that has not finished, or None when it has.

    The trainer writes last.pt after every epoch with ``finished`` set once it reached its last
    epoch or stopped early, so a killed (or ``stop_after``) run says so; a folder with
    metrics.jsonl but no last.pt was killed in its first epoch. last.pt files from before the
    flag existed count as finished.
    """
    run_dir = Path(run_dir)
    last = run_dir / LAST
    if last.is_file():
        state = load_checkpoint(last)
        if state.get("finished", True):
            return None
        return f"{last} is at epoch {state.get('epoch')} of {(state.get('config') or {}).get('epochs', '?')}"
    if (run_dir / "metrics.jsonl").is_file():
        return f"it has metrics.jsonl but no {LAST}: no epoch finished"
    return None


def head_dims(head: RetrievalHead, video_dims: dict[str, int], text_dims: dict[str, int]) -> tuple[dict, dict]:
    """The dims of exactly the features ``head`` reads (what a checkpoint must match)."""
    def used(keys, dims):
        return {k: dims[k] for k in keys if k in dims and not k.endswith(MASK_SUFFIX) and k != TOKENS}
    return used(head.video_inputs, video_dims), used(head.text_inputs, text_dims)


def check_recipe(config: Any, source: str) -> None:
    """Refuse a run trained under an earlier meaning of its head's config, before it is misread.

    Earlier versions called the multi-head LAFF block ``laff_ml`` (now: multi-level LAFF,
    whose section has ``batch_norm``) and pooled frames with a projection (``frame_pool``).
    """
    head = config.get("head") if isinstance(config, dict) else None
    kind = head.get("type") if isinstance(head, dict) else None
    section = head.get(kind) if isinstance(head, dict) else None
    if not isinstance(section, dict):
        return
    retrain = f"retrain it (`vidfuse train --config {kind} --out {Path(source).parent} --fresh`)"
    if kind == "laff_ml" and "batch_norm" not in section:
        raise CheckpointError(
            f"{source} was trained by an earlier vidfuse whose laff_ml was the multi-head LAFF block, not "
            f"multi-level LAFF (what laff_ml is now): {retrain}; multi-head LAFF is now head.type=laff with heads > 1"
        )
    if "frame_pool" in section:
        raise CheckpointError(
            f"{source} was trained by an earlier vidfuse ({kind} with a projecting frame pool and one BatchNorm "
            f"shared by the heads): {retrain}"
        )


def config_from_dict(schema: type, data: dict, source: str):
    """A stored config (checkpoint) as ``schema``; refused, naming the key, if this version lacks it."""
    return merge_config(schema, data, source=f"{source}: stored config does not fit this version")


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", which: str = CHECKPOINT):
    """(head in eval mode on ``device``, TrainConfig, info dict) from a run's best checkpoint.

    ``info``: epoch, metric_name, best_metric, val, video_dims, text_dims, vocab_size, path.
    """
    from fusion.trainer import TrainConfig  # trainer imports this module

    path = Path(run_dir)
    path = path / which if path.is_dir() else path
    ckpt = load_checkpoint(path)
    for key in ("model", "config", "video_dims", "text_dims"):
        if key not in ckpt:
            raise CheckpointError(f"{path} is not a vidfuse checkpoint (no {key!r})")
    check_recipe(ckpt["config"], str(path))
    cfg = config_from_dict(TrainConfig, ckpt["config"], str(path))
    head = build_head(cfg.head, ckpt["video_dims"], ckpt["text_dims"], ckpt.get("vocab_size"))
    try:
        head.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, AttributeError) as exc:  # weights of another head, or not weights
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: its weights do not fit the head its config describes: {reason}") from None
    head.to(device).eval()
    info = {k: ckpt.get(k) for k in ("epoch", "metric_name", "best_metric", "val", "video_dims", "text_dims", "vocab_size")}
    info["path"] = str(path)
    return head, cfg, info


def check_banks(info: dict, videos: Optional[FeatureBank] = None, texts: Optional[FeatureBank] = None,
                vocab_size: Optional[int] = None) -> None:
    """Refuse feature banks whose dims differ from what a loaded run was trained on."""
    source = info.get("path", "checkpoint")
    if videos is not None:
        check_dims(info["video_dims"], feature_dims(videos), "video", source)
    if texts is not None:
        check_dims(info["text_dims"], feature_dims(texts), "text", source)
    check_vocab(info.get("vocab_size"), vocab_size, source)
