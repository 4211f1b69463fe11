"""Fits a fusion head on in-memory features: the core of ``vidfuse train``.

Run directory: ``config.yaml`` (resolved config), ``metrics.jsonl`` (one line per epoch),
``checkpoint.pt`` (best validation epoch, see :mod:`fusion.checkpoint`) and ``last.pt``
(model, optimiser, lr controller, AMP scaler, RNG states, early-stop state, ``finished``: the
run reached its last epoch or stopped early), all written atomically (temp name, then rename)
every epoch. A kill leaves each file whole; the next run removes the temp files it left.

Resume is exact: the caption order of an epoch is a permutation drawn from
``(seed, epoch)`` and torch's RNG (dropout) is reseeded from the same pair at every epoch
start, so a run killed after epoch N and resumed reproduces the uninterrupted run's
metrics and weights. Batches are caption batches; their videos are the distinct videos of
those captions, and ``positives`` marks every caption-video pair that belongs together.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from fusion.checkpoint import CHECKPOINT, LAST, check_dims, check_recipe, check_vocab, head_dims, save_atomic
from fusion.config import HeadConfig, check_train_config
from fusion.data import TrainData, batch_to, collate_texts, collate_videos, feature_dims
from fusion.encode import embedding_similarity, encode_bank
from fusion.factory import build_head, uses_tokens
from fusion.heads import RetrievalHead
from fusion.loop import (LOWER_IS_BETTER, LoopState, epoch_seed, is_better, load_resume_state, metric_value,  # noqa: F401
                         optimizer_step, read_history, rng_state, run_epochs, set_rng_state, write_history)
from fusion.optim import LrController, OptimConfig, build_optimizer, resolve_optim
from vidfuse.config import config_to_dict, save_config
from vidfuse.errors import ConfigError, VidfuseError

log = logging.getLogger(__name__)

METRICS, CONFIG = "metrics.jsonl", "config.yaml"
# settings that may change between a run and its resumption (they do not alter the trajectory)
RESUMABLE_CHANGES = ("epochs", "early_stop", "device", "num_workers", "val_batch_size")


@dataclass
class TrainConfig:
    head: HeadConfig = field(default_factory=HeadConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = 80
    batch_size: int = 64  # captions per step
    seed: int = 0
    early_stop: int = 10  # stop after this many epochs without improvement of val_metric; 0 = never
    val_metric: str = "t2v/mIR"  # "<t2v|v2t>/<R@1|R@5|R@10|MedR|MeanR|mIR|mAP|rsum>"
    val_batch_size: int = 256
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision on CUDA (never on a CPU: there training runs in float32)
    amp_dtype: str = "auto"  # auto (bf16 where supported, else fp16) | float16 (+ grad scaling, as LAFF-ml) | bfloat16
    num_workers: int = 0  # DataLoader workers collating batches (h5py banks: keep 0)


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_metric: float
    metric_name: str
    epochs_run: int
    stopped_early: bool
    history: list[dict]
    best_val: dict


def check_val_metric(val_metric: str) -> None:
    side, _, name = val_metric.partition("/")
    if side not in ("t2v", "v2t") or name not in ("R@1", "R@5", "R@10", "MedR", "MeanR", "mIR", "mAP", "rsum"):
        raise ConfigError(f"val_metric {val_metric!r} is not '<t2v|v2t>/<R@1|R@5|R@10|MedR|MeanR|mIR|mAP|rsum>'")


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """Checks the run-level settings and fills the optimiser recipe (returns a new config)."""
    check_val_metric(cfg.val_metric)
    for key in ("epochs", "batch_size", "val_batch_size"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1 (got {getattr(cfg, key)})")
    if cfg.amp_dtype not in AMP_DTYPES:
        raise ConfigError(f"amp_dtype must be one of {', '.join(AMP_DTYPES)} (got {cfg.amp_dtype!r})")
    out = TrainConfig(**{k: getattr(cfg, k) for k in cfg.__dataclass_fields__})
    out.optim = resolve_optim(cfg.optim, cfg.head.type)
    check_train_config(out)  # so library callers get the command line's value checks too
    return out


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return dev


def epoch_batches(captions: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Caption batches of one epoch: a permutation drawn from (seed, epoch) alone.

    A trailing batch of a single caption is dropped (BatchNorm needs two samples).
    """
    order = np.random.default_rng(epoch_seed(seed, epoch)).permutation(np.asarray(captions))
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches.pop()
    return batches


class _Batches(torch.utils.data.Dataset):
    """Collates caption batch i: (text batch, video batch, positives [Bt, Bv])."""

    def __init__(self, data: TrainData, batches: list[np.ndarray], head: RetrievalHead):
        self.data, self.batches = data, batches
        self.vkeys, self.tkeys = head.video_inputs, head.text_inputs

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        caps = self.batches[i]
        cap_vid = np.asarray(self.data.caption_video)[caps]
        vids, local = np.unique(cap_vid, return_inverse=True)
        positives = torch.from_numpy(local[:, None] == np.arange(len(vids))[None, :])
        return (collate_texts(self.data.texts, caps, self.tkeys),
                collate_videos(self.data.videos, vids, self.vkeys), positives)


def _loader(ds: _Batches, cfg: TrainConfig, device: torch.device):
    if cfg.num_workers <= 0:
        return (ds[i] for i in range(len(ds)))
    return torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=cfg.num_workers,
                                       pin_memory=device.type == "cuda")


AMP_DTYPES = ("auto", "float16", "bfloat16")


def amp_settings(cfg: TrainConfig, device: torch.device) -> tuple[bool, torch.dtype]:
    """(autocast on, its dtype): off, in float32, unless ``amp`` on a CUDA device."""
    if not (cfg.amp and device.type == "cuda"):
        return False, torch.float32
    dtype = getattr(cfg, "amp_dtype", "auto")  # configs without the key (clip-ft) pick automatically
    if dtype == "auto":
        return True, (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return True, getattr(torch, dtype)


def validate(head: RetrievalHead, data: TrainData, captions: np.ndarray, batch_size: int = 256,
             device: Optional[torch.device] = None) -> dict:
    """t2v and v2t metrics of ``captions`` against their videos (full score, chunked)."""
    from index.metrics import t2v_v2t_metrics

    captions = np.asarray(captions, dtype=np.int64)
    cap_vid = np.asarray(data.caption_video)[captions]
    videos, targets = np.unique(cap_vid, return_inverse=True)
    video_emb = encode_bank(head, data.videos, "video", videos, batch_size, device)
    text_emb = encode_bank(head, data.texts, "text", captions, batch_size, device)
    sim = embedding_similarity(head, text_emb, video_emb, batch_size)
    return t2v_v2t_metrics(sim, targets.astype(np.int64))


def remove_stale_temps(out: Path) -> None:
    """Temp files a killed run's atomic writes left (``.last.pt.tmp<pid>``...): never read, as big as a checkpoint."""
    for name in (CHECKPOINT, LAST, METRICS, CONFIG):
        for tmp in out.glob(f".{name}.tmp*"):
            tmp.unlink(missing_ok=True)


def write_config(cfg: TrainConfig, path: Path) -> None:
    """config.yaml through a temp name: a killed run leaves the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    save_config(cfg, tmp)
    tmp.replace(path)


class _HeadEpochs:
    """What one epoch of a fusion head is, for :func:`fusion.loop.run_epochs`."""

    def __init__(self, cfg: TrainConfig, data: TrainData, head: RetrievalHead, optimizer, lr_ctrl, scaler,
                 amp: tuple[bool, torch.dtype], device: torch.device, out: Path, best_extra: dict,
                 progress: bool):
        self.cfg, self.data, self.head, self.device, self.out = cfg, data, head, device, out
        self.optimizer, self.lr_ctrl, self.scaler, self.amp = optimizer, lr_ctrl, scaler, amp
        self.best_extra, self.progress = best_extra, progress
        self.trainable = [p for p in head.parameters() if p.requires_grad]

    def train_epoch(self, epoch: int) -> dict:
        cfg, head, optimizer, device = self.cfg, self.head, self.optimizer, self.device
        head.train()
        batches = epoch_batches(self.data.train_captions, cfg.batch_size, cfg.seed, epoch)
        total, terms, n = 0.0, {}, 0
        bar = tqdm(_loader(_Batches(self.data, batches, head), cfg, device), total=len(batches), leave=False,
                   desc=f"epoch {epoch}", unit="batch", disable=not self.progress)
        for text_b, video_b, positives in bar:
            text_b, video_b = batch_to(text_b, device), batch_to(video_b, device)
            with torch.autocast(device.type, dtype=self.amp[1], enabled=self.amp[0]):
                with torch.set_grad_enabled(optimizer is not None):
                    loss, info = head.loss(head.encode_text(text_b), head.encode_video(video_b), positives.to(device))
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                optimizer_step(optimizer, self.scaler, self.trainable, cfg.optim.grad_clip)
                head.post_step()
                self.lr_ctrl.step()
            total += float(loss.detach())
            for k, v in info.items():
                terms[k] = terms.get(k, 0.0) + v
            n += 1
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        bar.close()
        return {"loss": total / max(n, 1), "terms": {k: v / max(n, 1) for k, v in terms.items()},
                "lr": self.lr_ctrl.lr if self.lr_ctrl else 0.0}

    def validate(self) -> tuple[dict, dict]:
        return validate(self.head, self.data, self.data.val_captions, self.cfg.val_batch_size, self.device), {}

    def save_best(self, epoch: int, value: Optional[float], val: dict) -> None:
        save_atomic({"model": self.head.state_dict(), **self.best_extra, "epoch": epoch,
                     "metric_name": self.cfg.val_metric, "best_metric": value, "val": val}, self.out / CHECKPOINT)

    def end_epoch(self, improved: bool, value: Optional[float]) -> None:
        if self.lr_ctrl:
            self.lr_ctrl.end_epoch(improved, value)

    def state(self) -> dict:
        return {"model": self.head.state_dict(),
                "optimizer": self.optimizer.state_dict() if self.optimizer else None,
                "lr": self.lr_ctrl.state_dict() if self.lr_ctrl else None, "scaler": self.scaler.state_dict()}


def train(cfg: TrainConfig, data: TrainData, out_dir: str | Path, resume: bool = True, progress: bool = True,
          stop_after: Optional[int] = None) -> TrainResult:
    """Train ``cfg.head`` on ``data``; returns the best epoch's result.

    ``resume``: continue from ``out_dir/last.pt`` when present (refused if the head/optim/
    batch/seed settings or the feature dims differ). ``stop_after``: return after this
    epoch as if killed (for tests and time-sliced jobs); a later call resumes.
    """
    data.validate()
    cfg = resolve_config(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    video_dims, text_dims = feature_dims(data.videos), feature_dims(data.texts)
    vocab = data.vocab_size if uses_tokens(cfg.head) else None
    if uses_tokens(cfg.head) and data.texts.tokens is None:
        raise VidfuseError("the text side uses the 'gru' feature but the text data has no token ids")
    cfg_dict = config_to_dict(cfg)

    remove_stale_temps(out)
    last_path, metrics_path = out / LAST, out / METRICS
    state = load_resume_state(last_path, cfg_dict, RESUMABLE_CHANGES,
                              lambda saved: check_recipe(saved["config"], str(last_path))) if resume else None
    if state is not None:
        check_dims(state["video_dims"], video_dims, "video", str(last_path))
        check_dims(state["text_dims"], text_dims, "text", str(last_path))
        check_vocab(state.get("vocab_size"), vocab, str(last_path))

    torch.manual_seed(cfg.seed)
    head = build_head(cfg.head, video_dims, text_dims, vocab,
                      data.word_embeddings if (state is None and vocab) else None).to(device)
    used_video, used_text = head_dims(head, video_dims, text_dims)
    trainable = [p for p in head.parameters() if p.requires_grad]
    optimizer = build_optimizer(head, cfg.optim, head.no_weight_decay()) if trainable else None
    batches_per_epoch = len(epoch_batches(data.train_captions, cfg.batch_size, cfg.seed, 1))
    lr_ctrl = LrController(optimizer, cfg.optim, cfg.epochs * batches_per_epoch,
                           lower_is_better=cfg.val_metric.split("/")[-1] in LOWER_IS_BETTER) if optimizer else None
    use_amp, amp_dtype = amp_settings(cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    loop = LoopState()
    if state is not None:
        head.load_state_dict(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
            lr_ctrl.load_state_dict(state["lr"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        loop = LoopState.restore(state, metrics_path)
        log.info("resuming %s after epoch %d (best %s=%.4f at epoch %d)", out, loop.epoch, cfg.val_metric,
                 loop.best if loop.best is not None else float("nan"), loop.best_epoch)
    write_config(cfg, out / CONFIG)
    write_history(metrics_path, loop.history)

    has_val = len(data.val_captions) > 0
    if not has_val:
        log.warning("no validation captions: the last epoch is kept as the best checkpoint")
    if not trainable:
        log.info("%s has no trainable parameters: evaluating only", cfg.head.type)
    dims = {"config": cfg_dict, "video_dims": used_video, "text_dims": used_text, "vocab_size": vocab}
    task = _HeadEpochs(cfg, data, head, optimizer, lr_ctrl, scaler, (use_amp, amp_dtype), device, out, dims, progress)
    loop = run_epochs(task, loop, epochs=cfg.epochs if trainable else 1, seed=cfg.seed, val_metric=cfg.val_metric,
                      early_stop=cfg.early_stop, has_val=has_val, metrics_path=metrics_path, last_path=last_path,
                      last_extra=dims, desc=f"train {cfg.head.type}", progress=progress, stop_after=stop_after,
                      shown=lambda val: {"rsum": f"{val['t2v']['rsum']:.1f}"})
    best_record = loop.record(loop.best_epoch)
    return TrainResult(run_dir=out, best_epoch=loop.best_epoch,
                       best_metric=loop.best if loop.best is not None else float("nan"), metric_name=cfg.val_metric,
                       epochs_run=loop.epoch, stopped_early=loop.stopped, history=loop.history,
                       best_val={k: best_record[k] for k in ("t2v", "v2t") if k in best_record})
