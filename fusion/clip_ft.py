"""clip-ft: CLIP fine-tuned end to end on a dataset's training captions (``vidfuse finetune-clip``).

LAFF's best single feature. The model is CLIP4Clip's meanP with the whole CLIP trained: a
video is ``num_frames`` frames through the image tower, its embedding the mean of the
L2-normalised frame embeddings (exactly what the ``clip`` extractor writes), compared by
cosine with the text tower's caption embedding. No head is added, so the result is a plain
CLIP checkpoint (``RUN/clip_ft.pt``, written by ``extractors.clip.save_clip_checkpoint``)
that extraction loads with ``extractors.clip.pretrained: RUN/clip_ft.pt``.

- Frames: decoded with ``pipeline.decode.open_video`` (only the sampled indices) and
  preprocessed by the clip extractor's own transform, inside a torch DataLoader, once per
  video per epoch. Training draws one random frame per uniform segment (TSN); validation
  takes the segment centres of ``pipeline.sampling`` (the extractor's frames). A video that
  fails to decode is skipped, listed in a warning and counted in ``metrics.jsonl``.
- Batches are batches of videos (each decoded once per epoch), each with
  ``captions_per_video`` of its captions; captions of one video are positives of that video
  only, never negatives of each other (``positives`` mask of ``fusion.losses``).
- Loss: LAFF's hardest-negative triplet (cosine, margin 0.2) or CLIP4Clip's symmetric
  InfoNCE with CLIP's own logit scale (capped at 100 as in CLIP).
- Every CLIP parameter is trained at ``optim.lr * clip_lr_scale`` (LAFF: base lr / 100 for
  CLIP; clip-ft has no new layer that would run at the base lr).
- Run folder as ``vidfuse train``'s (``fusion.trainer`` helpers): ``config.yaml``,
  ``metrics.jsonl`` (epoch 0 = the model before fine-tuning), ``last.pt`` for an exact
  resume, the best epoch's ``clip_ft.pt`` with ``clip_ft.json`` and an extraction config
  ``extract_clip_ft.yaml`` that points at it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from extractors.clip import ClipConfig, save_clip_checkpoint
from fusion.checkpoint import LAST, CheckpointError, load_checkpoint, save_atomic
from fusion.losses import info_nce, triplet_ranking_loss
from fusion.optim import LrController, OptimConfig, build_optimizer, resolve_optim
from fusion.trainer import (TrainResult, amp_settings, check_val_metric, config_differences, epoch_batches,
                            epoch_seed, is_better, metric_value, pick_device, read_history, rng_state, set_rng_state,
                            write_history)
from pipeline.config import DecodeConfig, ExtractConfig, TextConfig
from pipeline.sampling import SamplingConfig, sample_indices, validate_sampling
from vidfuse.config import config_to_dict, save_config
from vidfuse.errors import ConfigError, VidfuseError

log = logging.getLogger(__name__)

CLIP_FT = "clip_ft.pt"  # the best epoch's CLIP, loadable by the clip extractor
CLIP_FT_INFO = "clip_ft.json"  # what it is: base weights, epoch, validation metrics, inputs
EXTRACT_CONFIG = "extract_clip_ft.yaml"  # extraction config whose extractors.clip loads CLIP_FT
LOSSES = ("triplet", "infonce")
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps its learned temperature here
_SHOWN = 10  # video ids listed in a warning


@dataclass
class ClipFtLossConfig:
    type: str = "triplet"  # triplet (LAFF: hardest negative, cosine) | infonce (CLIP4Clip, CLIP's logit scale)
    margin: float = 0.2  # triplet
    direction: str = "t2v"  # triplet: t2v (LAFF) | v2t | both
    hardest: bool = True  # triplet: hardest negative (VSE++) instead of the sum over all


@dataclass
class ClipFtConfig:
    # the CLIP to start from and how its frames are sampled/preprocessed (the extractor's schema)
    clip: ClipConfig = field(
        default_factory=lambda: ClipConfig(sampling=SamplingConfig(kind="uniform", num_frames=8))
    )
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    loss: ClipFtLossConfig = field(default_factory=ClipFtLossConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(recipe="dllfa"))
    clip_lr_scale: float = 0.01  # CLIP's lr = optim.lr * clip_lr_scale (LAFF: base / 100)
    epochs: int = 10
    batch_size: int = 64  # videos per batch (each with captions_per_video captions)
    captions_per_video: int = 1  # captions of a video drawn per epoch; 0 = all of them
    accum_steps: int = 1  # batches whose gradients add up to one optimiser step
    seed: int = 0
    early_stop: int = 3  # stop after this many epochs without improvement of val_metric; 0 = never
    val_metric: str = "t2v/mIR"
    val_batch_size: int = 32  # videos per forward pass in validation
    validate_before: bool = True  # validate the starting model first (metrics.jsonl epoch 0)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16 + grad scaling)
    num_workers: int = 0  # DataLoader processes decoding videos


@dataclass
class VideoSet:
    """The videos of one split found in the folder, with their captions (index i = video i)."""

    ids: list[str]
    paths: list[str]
    captions: list[list[str]]
    missing: list[str]  # videos of the split with captions but no file in the folder

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_captions(self) -> int:
        return sum(len(c) for c in self.captions)


@dataclass
class ClipFtData:
    train: VideoSet
    val: VideoSet
    videos_dir: str
    captions_path: str
    splits_dir: Optional[str] = None


@dataclass
class ZeroShot:
    """Validation result: metrics (``t2v``/``v2t`` dicts) and the videos that failed to decode."""

    metrics: dict
    failed: dict[str, str]
    videos: int
    captions: int


@dataclass
class ClipFtResult(TrainResult):
    """A fusion run's result, plus what only clip-ft has."""

    checkpoint: Path  # RUN/clip_ft.pt
    baseline_val: dict  # the starting model's validation metrics (epoch 0), {} when not measured
    failed: dict[str, str]  # video id -> why it could not be decoded (over all epochs)


class ClipFtDataError(VidfuseError):
    """Videos, captions and splits that do not fit together."""


# --- config ------------------------------------------------------------------------------------


def resolve_clip_ft_config(cfg: ClipFtConfig) -> ClipFtConfig:
    """Checks the settings and fills the optimiser recipe (``auto`` = CLIP4Clip's AdamW); a new config."""
    check_val_metric(cfg.val_metric)
    for key in ("epochs", "batch_size", "val_batch_size", "accum_steps"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1 (got {getattr(cfg, key)})")
    if cfg.captions_per_video < 0:
        raise ConfigError(f"captions_per_video must be >= 0 (0 = all), got {cfg.captions_per_video}")
    if not cfg.clip_lr_scale > 0:
        raise ConfigError(f"clip_lr_scale must be > 0, got {cfg.clip_lr_scale}")
    if cfg.loss.type not in LOSSES:
        raise ConfigError(f"loss.type {cfg.loss.type!r} is unknown (choose from {', '.join(LOSSES)})")
    if cfg.loss.direction not in ("t2v", "v2t", "both"):
        raise ConfigError(f"loss.direction must be t2v, v2t or both, not {cfg.loss.direction!r}")
    try:
        sampling = validate_sampling(cfg.clip.sampling)
    except ConfigError as exc:
        raise ConfigError(f"clip.{exc}") from None
    if sampling.kind != "uniform":
        raise ConfigError(
            f"clip.sampling.kind must be 'uniform' for fine-tuning (training draws one random frame per "
            f"segment, validation takes the segment centres), got {sampling.kind!r}"
        )
    out = copy.deepcopy(cfg)
    out.optim = resolve_optim(cfg.optim, "meanp")
    return out


# --- data --------------------------------------------------------------------------------------


def _shown(ids: Sequence[str]) -> str:
    ids = list(ids)
    return ", ".join(ids[:_SHOWN]) + (f", ... ({len(ids) - _SHOWN} more)" if len(ids) > _SHOWN else "")


def _video_set(split_ids: Sequence[str], by_video: dict[str, list[str]], files: dict[str, str]) -> VideoSet:
    wanted = [v for v in split_ids if by_video.get(v)]
    present = [v for v in wanted if v in files]
    return VideoSet(ids=present, paths=[files[v] for v in present], captions=[by_video[v] for v in present],
                    missing=[v for v in wanted if v not in files])


def load_clip_ft_data(videos_dir: str, captions: str, splits: Optional[str] = None,
                      extensions: Sequence[str] = DecodeConfig().extensions) -> ClipFtData:
    """Train/val videos of ``captions`` (splits beside it, or in ``splits``) found under ``videos_dir``.

    Video ids are paths relative to ``videos_dir`` without extension, as extraction names them.
    No train video in the folder is an error; some missing is a warning with their count.
    """
    from pipeline.captions import captions_by_video
    from pipeline.training_set import Corpus
    from pipeline.video_files import list_videos, video_id_for

    paths = list_videos(str(videos_dir), list(extensions))  # NoVideosError: folder missing or empty
    files: dict[str, str] = {}
    for path in paths:
        vid = video_id_for(path, str(videos_dir))
        if vid in files:
            log.warning("two files for video id %r: %s and %s; using the first", vid, files[vid], path)
            continue
        files[vid] = path
    corpus = Corpus.read(str(captions), splits)
    by_video = {v: [c.text for c in caps] for v, caps in captions_by_video(corpus.captions).items()}
    train = _video_set(corpus.split_videos("train"), by_video, files)
    val = _video_set(corpus.splits.get("val", []), by_video, files)
    if not train.ids:
        wanted = train.missing
        raise ClipFtDataError(
            f"none of the {len(wanted)} train videos with captions in {captions} is under {videos_dir} "
            f"(looked for ids {_shown(wanted)}; the folder has {len(files)} videos, e.g. {_shown(sorted(files)[:3])})"
            if wanted else f"no caption of {captions} belongs to a video of the train split"
        )
    for name, vs in (("train", train), ("val", val)):
        if vs.missing:
            log.warning("%d of %d %s videos with captions are not under %s and are left out: %s",
                        len(vs.missing), len(vs.missing) + len(vs), name, videos_dir, _shown(vs.missing))
    return ClipFtData(train=train, val=val, videos_dir=str(videos_dir), captions_path=str(captions),
                      splits_dir=splits)


# --- frames ------------------------------------------------------------------------------------


def random_segment_indices(num_frames: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """TSN training sampling: one uniformly random frame in each of ``count`` equal segments.

    ``floor((k + u_k) * N / count)``, u_k ~ U[0, 1): the random twin of the segment centres
    (u = 0.5) that evaluation uses; short videos repeat frames, as there.
    """
    if int(num_frames) < 1:
        raise ValueError(f"cannot sample from a video with {num_frames} frames")
    k = np.arange(count, dtype=np.float64)
    idx = np.floor((k + rng.random(count)) * num_frames / count).astype(np.int64)
    return np.minimum(idx, num_frames - 1)


class VideoFrames(torch.utils.data.Dataset):
    """Item i: (i, preprocessed frames [T, 3, S, S] or None, failure reason or None).

    ``epoch`` None: the sampling's segment centres (validation); otherwise random frames
    drawn from (seed, epoch, i), so they do not depend on DataLoader workers or order.
    """

    def __init__(self, paths: Sequence[str], sampling: SamplingConfig, transform, decode: DecodeConfig,
                 seed: int = 0, epoch: Optional[int] = None):
        self.paths, self.sampling, self.transform = list(paths), sampling, transform
        from pipeline.decode_auto import resolve_backend

        self.backend, self.fallback = resolve_backend(decode.backend), decode.fallback
        self.seed, self.epoch = seed, epoch

    def __len__(self) -> int:
        return len(self.paths)

    def indices(self, i: int, num_frames: int) -> np.ndarray:
        if self.epoch is None:
            return sample_indices(self.sampling, num_frames)
        rng = np.random.default_rng([self.seed, self.epoch, i])
        return random_segment_indices(num_frames, self.sampling.num_frames, rng)

    def __getitem__(self, i: int):
        from pipeline.decode import VideoDecodeError, open_video

        try:
            with open_video(self.paths[i], backend=self.backend, fallback=self.fallback) as reader:
                frames = reader.get_frames(self.indices(i, reader.info.num_frames))
            return i, self.transform(frames), None
        except VideoDecodeError as exc:  # an unreadable video is skipped and reported, never a crash
            return i, None, exc.reason
        except ValueError as exc:  # no frame to sample, or frames the transform cannot take
            return i, None, f"{type(exc).__name__}: {exc}"


def collate_frames(items):
    """(indices of decoded videos [B'], frames [B', T, 3, S, S] or None, [(index, reason)] failed)."""
    ok = [(i, x) for i, x, _ in items if x is not None]
    failed = [(i, err) for i, x, err in items if x is None]
    frames = torch.stack([x for _, x in ok]) if ok else None
    return torch.tensor([i for i, _ in ok], dtype=torch.long), frames, failed


def frame_loader(dataset: VideoFrames, batches: Sequence[Sequence[int]], num_workers: int,
                 device: torch.device) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_sampler=[list(map(int, b)) for b in batches],
                                       collate_fn=collate_frames, num_workers=num_workers,
                                       pin_memory=device.type == "cuda")


# --- model -------------------------------------------------------------------------------------


def video_embeddings(model: torch.nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """[B, T, 3, S, S] -> [B, D]: l2n(mean over frames of l2n(frame embedding)), float32."""
    b, t = frames.shape[:2]
    per_frame = model.encode_image(frames.flatten(0, 1), normalize=True).float().view(b, t, -1)
    return F.normalize(per_frame.mean(dim=1), dim=-1)


def text_embeddings(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return F.normalize(model.encode_text(tokens, normalize=True).float(), dim=-1)


def clip_ft_loss(model: torch.nn.Module, text: torch.Tensor, video: torch.Tensor, positives: torch.Tensor,
                 cfg: ClipFtLossConfig) -> torch.Tensor:
    """The configured loss on cosine scores text x video [Bt, Bv] (``positives`` marks the pairs)."""
    scores = text @ video.t()
    if cfg.type == "triplet":
        return triplet_ranking_loss(scores, positives, cfg.margin, cfg.direction, cfg.hardest)
    return info_nce(model.logit_scale.exp().float() * scores, positives)


def build_start_model(clip: ClipConfig):
    """The clip extractor at the start of fine-tuning, built as the extraction job builds it
    (seeded, so random weights equal the extractor's); its model is unfrozen by the caller."""
    from extractors.registry import build_extractor

    return build_extractor("clip", clip, device="cpu")


# --- validation --------------------------------------------------------------------------------


@torch.no_grad()
def encode_video_set(model: torch.nn.Module, videos: VideoSet, transform, sampling: SamplingConfig,
                     decode: DecodeConfig, batch_size: int = 32, device: str | torch.device = "cpu",
                     num_workers: int = 0, amp: tuple[bool, torch.dtype] = (False, torch.float32),
                     progress: bool = False) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """(embeddings [N, D] of the decoded videos, their indices in ``videos``, {id: reason} failed)."""
    device = torch.device(device)
    batches = [list(range(s, min(len(videos), s + batch_size))) for s in range(0, len(videos), batch_size)]
    loader = frame_loader(VideoFrames(videos.paths, sampling, transform, decode), batches, num_workers, device)
    embs, kept, failed = [], [], {}
    for idx, frames, bad in tqdm(loader, total=len(batches), desc="validate videos", unit="batch", leave=False,
                                 disable=not progress):
        failed.update({videos.ids[i]: reason for i, reason in bad})
        if frames is None:
            continue
        with torch.autocast(device.type, dtype=amp[1], enabled=amp[0]):
            embs.append(video_embeddings(model, frames.to(device, non_blocking=True)).cpu())
        kept.append(idx)
    if not embs:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), failed
    return torch.cat(embs).numpy(), torch.cat(kept).numpy(), failed


@torch.no_grad()
def encode_captions(model: torch.nn.Module, tokenizer, texts: Sequence[str], batch_size: int = 256,
                    device: str | torch.device = "cpu",
                    amp: tuple[bool, torch.dtype] = (False, torch.float32)) -> np.ndarray:
    device = torch.device(device)
    out = []
    for s in range(0, len(texts), batch_size):
        with torch.autocast(device.type, dtype=amp[1], enabled=amp[0]):
            out.append(text_embeddings(model, tokenizer(list(texts[s : s + batch_size])).to(device)).cpu())
    return torch.cat(out).numpy()


def zero_shot_metrics(model: torch.nn.Module, tokenizer, transform, videos: VideoSet, sampling: SamplingConfig,
                      decode: Optional[DecodeConfig] = None, batch_size: int = 32, text_batch_size: int = 256,
                      device: str | torch.device = "cpu", num_workers: int = 0,
                      amp: tuple[bool, torch.dtype] = (False, torch.float32), progress: bool = False) -> ZeroShot:
    """t2v/v2t metrics of the captions of ``videos`` by cosine of CLIP text vs mean frame embedding.

    No head: what the clip features and clip text features of this model give as they are.
    Videos that fail to decode are left out with their captions (listed in ``failed``).
    """
    from index.metrics import inner_product_rows, t2v_v2t_metrics

    decode = decode or DecodeConfig()
    was_training = model.training
    model.eval()
    try:
        video_emb, kept, failed = encode_video_set(model, videos, transform, sampling, decode, batch_size, device,
                                                   num_workers, amp, progress)
        if len(kept) == 0:
            raise ClipFtDataError(f"none of the {len(videos)} validation videos could be decoded: {_shown(failed)}")
        texts, targets = [], []
        for slot, i in enumerate(kept):
            texts += videos.captions[i]
            targets += [slot] * len(videos.captions[i])
        text_emb = encode_captions(model, tokenizer, texts, text_batch_size, device, amp)
    finally:
        model.train(was_training)
    metrics = t2v_v2t_metrics(inner_product_rows(text_emb, video_emb), np.asarray(targets, np.int64))
    return ZeroShot(metrics=metrics, failed=failed, videos=len(kept), captions=len(texts))


# --- training ----------------------------------------------------------------------------------


def batch_captions(videos: VideoSet, batch: np.ndarray, per_video: int, rng: np.random.Generator):
    """Caption texts of a video batch and positives [Bt, Bv] (caption j of video i -> column i)."""
    texts, owner = [], []
    for col, i in enumerate(batch):
        caps = videos.captions[int(i)]
        pick = range(len(caps)) if per_video == 0 or per_video >= len(caps) else \
            sorted(rng.choice(len(caps), per_video, replace=False))
        texts += [caps[j] for j in pick]
        owner += [col] * len(pick)
    owner_t = torch.tensor(owner)
    return texts, owner_t[:, None] == torch.arange(len(batch))[None, :]


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def write_extract_config(cfg: ClipFtConfig, checkpoint: Path, path: Path) -> None:
    """An extraction config whose ``extractors.clip`` loads ``checkpoint`` with the run's sampling."""
    clip = config_to_dict(cfg.clip)
    clip["pretrained"] = str(Path(checkpoint).resolve())
    clip["quick_gelu"] = None  # read from the checkpoint
    extract = ExtractConfig(decode=copy.deepcopy(cfg.decode), extractors={"clip": clip},
                            text=TextConfig(encoders=["clip"]))
    tmp = path.with_name(f".{path.name}.tmp")
    save_config(extract, tmp)
    tmp.replace(path)


def _warn_failed(what: str, failed: dict[str, str], total: int) -> None:
    if failed:
        shown = "; ".join(f"{v} ({r})" for v, r in list(failed.items())[:_SHOWN])
        more = f"; ... ({len(failed) - _SHOWN} more)" if len(failed) > _SHOWN else ""
        log.warning("%s: skipped %d of %d videos that could not be decoded: %s%s", what, len(failed), total, shown,
                    more)


def _train_epoch(model, tokenizer, optimizer, scaler, lr_ctrl: LrController, cfg: ClipFtConfig, videos: VideoSet,
                 loader, num_batches: int, caption_rng: np.random.Generator, device: torch.device,
                 amp: tuple[bool, torch.dtype], progress: bool, desc: str) -> tuple[float, int, dict[str, str]]:
    """One pass over ``loader``'s video batches: (mean loss, frames trained on, {id: reason} not decoded).

    Gradients of ``cfg.accum_steps`` batches add up to one optimiser step (the last one of
    the epoch steps with what it has); the logit scale stays at most ln 100, as in CLIP.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    failed: dict[str, str] = {}
    total, n, frames_seen = 0.0, 0, 0
    pending = False  # gradients accumulated since the last optimiser step
    optimizer.zero_grad(set_to_none=True)
    bar = tqdm(loader, total=num_batches, leave=False, desc=desc, unit="batch", disable=not progress)
    for step, (idx, frames, bad_videos) in enumerate(bar, 1):
        failed.update({videos.ids[i]: reason for i, reason in bad_videos})
        if frames is not None:
            texts, positives = batch_captions(videos, idx.numpy(), cfg.captions_per_video, caption_rng)
            tokens = tokenizer(texts).to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp[1], enabled=amp[0]):
                video = video_embeddings(model, frames.to(device, non_blocking=True))
                text = text_embeddings(model, tokens)
                loss = clip_ft_loss(model, text, video, positives.to(device), cfg.loss)
            scaler.scale(loss / cfg.accum_steps).backward()
            pending = True
            total += float(loss.detach())
            n += 1
            frames_seen += frames.shape[0] * frames.shape[1]
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        if pending and (step % cfg.accum_steps == 0 or step == num_batches):
            if cfg.optim.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trainable, cfg.optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            lr_ctrl.step()
            pending = False
    bar.close()
    return total / max(n, 1), frames_seen, failed


def _best_info(cfg: ClipFtConfig, data: ClipFtData, checkpoint: Path, base_weights: str, epoch: int,
               metric: Optional[float], val: dict, history: list[dict]) -> dict:
    """``clip_ft.json``: what the checkpoint is, where it came from, how it scored before and after."""
    def resolved(path: Optional[str]) -> Optional[str]:
        return str(Path(path).resolve()) if path else None

    return {
        "checkpoint": str(checkpoint.resolve()), "model": cfg.clip.model, "base_weights": base_weights,
        "epoch": epoch, "metric_name": cfg.val_metric, "best_metric": metric, "val": val,
        "baseline_val": next(({k: r[k] for k in ("t2v", "v2t")} for r in history if r.get("baseline")), {}),
        "videos": resolved(data.videos_dir), "captions": resolved(data.captions_path),
        "splits": resolved(data.splits_dir), "train_videos": len(data.train), "val_videos": len(data.val),
        "missing_videos": {"train": len(data.train.missing), "val": len(data.val.missing)},
    }


def finetune_clip(cfg: ClipFtConfig, data: ClipFtData, out_dir: str | Path, resume: bool = True,
                  progress: bool = True, stop_after: Optional[int] = None) -> ClipFtResult:
    """Fine-tune ``cfg.clip`` on ``data.train``; the best validation epoch goes to ``out_dir/clip_ft.pt``.

    ``resume``: continue from ``out_dir/last.pt`` when present (refused when settings that
    shape the trajectory differ). ``stop_after``: return after this epoch as if killed.
    """
    cfg = resolve_clip_ft_config(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    cfg_dict = config_to_dict(cfg)
    last_path, metrics_path, best_path = out / LAST, out / "metrics.jsonl", out / CLIP_FT

    state: Optional[dict] = None
    if resume and last_path.is_file():
        state = load_checkpoint(last_path)
        if "clip_ft" not in state:
            raise CheckpointError(f"{last_path} is not a finetune-clip checkpoint (a fusion run?)")
        diffs = config_differences(state["config"], cfg_dict)
        if diffs:
            raise CheckpointError(f"cannot resume {out}: {'; '.join(diffs)} (start a new run, or resume=False)")

    extractor = build_start_model(cfg.clip)
    model, transform, tokenizer = extractor.model, extractor.transform, extractor.tokenizer
    base_weights = extractor.weights
    del extractor
    model.requires_grad_(True)
    if cfg.loss.type != "infonce":
        model.logit_scale.requires_grad_(False)  # unused by the triplet loss: leave it as it was
    model.to(device).train()
    clip_optim = dataclasses.replace(cfg.optim, lr=cfg.optim.lr * cfg.clip_lr_scale)
    no_decay = {n for n, p in model.named_parameters() if n.endswith("positional_embedding") or "logit_scale" in n}
    optimizer = build_optimizer(model, clip_optim, no_decay)
    train_ids = np.arange(len(data.train))
    steps_per_epoch = math.ceil(len(epoch_batches(train_ids, cfg.batch_size, cfg.seed, 1)) / cfg.accum_steps)
    lr_ctrl = LrController(optimizer, clip_optim, cfg.epochs * steps_per_epoch)
    use_amp, amp_dtype = amp_settings(cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    epoch, best, best_epoch, bad, stopped = 0, None, 0, 0, False
    history: list[dict] = []
    failed: dict[str, str] = {}
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        lr_ctrl.load_state_dict(state["lr"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        epoch, best, best_epoch = state["epoch"], state["best_metric"], state["best_epoch"]
        bad, stopped, failed = state["bad_epochs"], state["stopped_early"], dict(state["failed"])
        history = read_history(metrics_path, epoch)
        log.info("resuming %s after epoch %d (best %s=%.4f at epoch %d)", out, epoch, cfg.val_metric,
                 best if best is not None else float("nan"), best_epoch)
    save_config(cfg, out / "config.yaml")
    write_history(metrics_path, history)

    has_val = len(data.val) > 0
    if not has_val:
        log.warning("no validation videos: the last epoch is kept as the best checkpoint")

    def validate() -> ZeroShot:
        result = zero_shot_metrics(model, tokenizer, transform, data.val, cfg.clip.sampling, cfg.decode,
                                   cfg.val_batch_size, cfg.clip.text_batch_size, device, cfg.num_workers,
                                   (use_amp, amp_dtype), progress)
        _warn_failed("validation", result.failed, len(data.val))
        return result

    if state is None and has_val and cfg.validate_before:
        zs = validate()
        history.append({"epoch": 0, "baseline": True, **zs.metrics, "val_skipped": len(zs.failed),
                        "val_metric": metric_value(zs.metrics, cfg.val_metric), "best": False})
        write_history(metrics_path, history)
        log.info("before fine-tuning: %s %.4f, t2v R@1 %.1f", cfg.val_metric, history[-1]["val_metric"],
                 zs.metrics["t2v"]["R@1"])

    epochs_bar = tqdm(total=cfg.epochs, initial=min(epoch, cfg.epochs), desc="finetune-clip", unit="epoch",
                      disable=not progress)
    while epoch < cfg.epochs and not stopped:
        if stop_after is not None and epoch >= stop_after:
            break
        epoch += 1
        t0 = time.time()
        seed = epoch_seed(cfg.seed, epoch)
        torch.manual_seed(seed)
        caption_rng = np.random.default_rng([seed, 1])
        model.train()
        batches = epoch_batches(train_ids, cfg.batch_size, cfg.seed, epoch)
        dataset = VideoFrames(data.train.paths, cfg.clip.sampling, transform, cfg.decode, cfg.seed, epoch)
        loader = frame_loader(dataset, batches, cfg.num_workers, device)
        loss, frames_seen, epoch_failed = _train_epoch(
            model, tokenizer, optimizer, scaler, lr_ctrl, cfg, data.train, loader, len(batches), caption_rng,
            device, (use_amp, amp_dtype), progress=progress, desc=f"epoch {epoch}")
        _warn_failed(f"epoch {epoch}", epoch_failed, len(data.train))
        failed.update(epoch_failed)

        record: dict[str, Any] = {"epoch": epoch, "loss": loss, "lr": lr_ctrl.lr,
                                  "skipped": len(epoch_failed), "frames": frames_seen,
                                  "train_s": round(time.time() - t0, 3)}
        if has_val:
            zs = validate()
            failed.update(zs.failed)
            val, value = zs.metrics, metric_value(zs.metrics, cfg.val_metric)
            record.update(val)
            record["val_skipped"] = len(zs.failed)
        else:
            val, value = {}, -record["loss"]
        improved = is_better(value, best, cfg.val_metric) or not has_val
        record.update({"val_metric": value if has_val else None, "best": improved})
        if improved:
            best, best_epoch, bad = value, epoch, 0
            save_clip_checkpoint(model, cfg.clip, best_path)
            _write_json(out / CLIP_FT_INFO, _best_info(cfg, data, best_path, base_weights, epoch,
                                                        value if has_val else None, val, history))
            write_extract_config(cfg, best_path, out / EXTRACT_CONFIG)
        else:
            bad += 1
        lr_ctrl.end_epoch(improved)
        stopped = bool(has_val and cfg.early_stop and bad >= cfg.early_stop)
        history.append(record)
        write_history(metrics_path, history)
        save_atomic({"clip_ft": True, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "lr": lr_ctrl.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(), "epoch": epoch,
                     "best_metric": best, "best_epoch": best_epoch, "bad_epochs": bad, "stopped_early": stopped,
                     "failed": failed, "config": cfg_dict}, last_path)
        epochs_bar.update(1)
        shown = {"loss": f"{record['loss']:.4f}"}
        if has_val:
            shown.update({cfg.val_metric: f"{value:.4f}", "t2v R@1": f"{val['t2v']['R@1']:.1f}"})
        epochs_bar.set_postfix(shown)
        log.info("epoch %d: %s (%.1fs)%s", epoch, shown, time.time() - t0, " [best]" if improved else "")
        if stopped:
            log.info("early stop: %d epochs without improvement of %s", bad, cfg.val_metric)
    epochs_bar.close()

    best_record = next((r for r in history if r["epoch"] == best_epoch and not r.get("baseline")), {})
    baseline = next((r for r in history if r.get("baseline")), {})
    return ClipFtResult(
        run_dir=out, checkpoint=best_path, best_epoch=best_epoch,
        best_metric=best if best is not None else float("nan"), metric_name=cfg.val_metric, epochs_run=epoch,
        stopped_early=stopped, history=history,
        best_val={k: best_record[k] for k in ("t2v", "v2t") if k in best_record},
        baseline_val={k: baseline[k] for k in ("t2v", "v2t") if k in baseline}, failed=failed,
    )


def run_finetune_clip(cfg: ClipFtConfig, videos_dir: str, captions: str, out_dir: str, splits: Optional[str] = None,
                      resume: bool = True, progress: bool = True, stop_after: Optional[int] = None) -> ClipFtResult:
    """``vidfuse finetune-clip``: read the inputs, then :func:`finetune_clip`."""
    cfg = resolve_clip_ft_config(cfg)  # bad settings before any file is read
    data = load_clip_ft_data(videos_dir, captions, splits, cfg.decode.extensions)
    log.info("finetune-clip: %d train videos (%d captions), %d val videos (%d captions)", len(data.train),
             data.train.num_captions, len(data.val), data.val.num_captions)
    return finetune_clip(cfg, data, out_dir, resume=resume, progress=progress, stop_after=stop_after)
