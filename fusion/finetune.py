"""Fine-tuning of a video extractor end to end on a dataset's training captions (``vidfuse finetune``).

LAFF's best single feature is clip-ft, CLIP fine-tuned this way; the same stage trains any
registered extractor (``extractor: x3d``, irCSN ...), so that clip-level models learn what
captions say about motion and event order. The model is CLIP4Clip's meanP around the
extractor: a video is its sampled units (frames, or clips for 3D CNNs) through the
extractor's own network, its embedding the mean over units of what the extractor writes
(for CLIP the L2-normalised frame embeddings), compared by cosine with a CLIP text tower's
caption embedding. For ``extractor: clip`` the text tower is the same CLIP and nothing is
added; for any other the ``clip`` section names the CLIP whose text tower is trained beside
it, and a linear map takes the extractor's dims to CLIP's (it is not part of the result).
The result is the extractor's checkpoint (``RUN/<extractor>_ft.pt``; for CLIP written by
``extractors.clip.save_clip_checkpoint``) that extraction loads with
``extractors.<extractor>.pretrained: RUN/<extractor>_ft.pt``.

- Frames: decoded with ``pipeline.decode.open_video`` (only the sampled indices) and
  preprocessed by the extractor's own transform, inside a torch DataLoader, once per video
  per epoch (``cache_frames``: each video is decoded once and kept in memory). Training
  draws one random frame per uniform segment (TSN), or random clip starts, one in each
  equal share of the video, for clip sampling; validation takes the extractor's own frames
  (``pipeline.sampling``). A video that fails to decode is skipped, listed in a warning and
  counted in ``metrics.jsonl``.
- Batches are batches of videos (each decoded once per epoch), each with
  ``captions_per_video`` of its captions; captions of one video are positives of that video
  only, never negatives of each other (``positives`` mask of ``fusion.losses``).
- Loss: LAFF's hardest-negative triplet (cosine, margin 0.2) or CLIP4Clip's symmetric
  InfoNCE with CLIP's own logit scale (capped at 100 as in CLIP).
- Every parameter is trained at ``optim.lr * clip_lr_scale`` (LAFF: base lr / 100 for
  CLIP; pretrained towers have no new layer that would run at the base lr).
- The epochs run in the one training loop of :mod:`fusion.loop`, as ``vidfuse train``'s do:
  ``config.yaml``, ``metrics.jsonl`` (epoch 0 = the model before fine-tuning), ``last.pt``
  for an exact resume, the best epoch's ``<extractor>_ft.pt`` with ``<extractor>_ft.json``
  and an extraction config ``extract_<extractor>_ft.yaml`` that points at it.
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
from fusion.checkpoint import LAST, CheckpointError, save_atomic
from fusion.losses import info_nce, triplet_ranking_loss
from fusion.loop import LOWER_IS_BETTER, LoopState, epoch_seed, load_resume_state, metric_value, optimizer_step, run_epochs, set_rng_state, \
    write_history
from fusion.optim import LrController, OptimConfig, build_optimizer, resolve_optim
from fusion.trainer import RESUMABLE_CHANGES, TrainResult, amp_settings, check_val_metric, epoch_batches, pick_device
from pipeline.config import DecodeConfig, ExtractConfig, TextConfig
from pipeline.sampling import SamplingConfig, sample_indices, validate_sampling
from vidfuse.config import config_to_dict, save_config
from vidfuse.errors import ConfigError, VidfuseError

log = logging.getLogger(__name__)

LOSSES = ("triplet", "infonce")
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps its learned temperature here
_SHOWN = 10  # video ids listed in a warning


def checkpoint_name(extractor: str) -> str:
    """The best epoch's weights, loadable by the extractor (``clip_ft.pt`` for CLIP)."""
    return f"{extractor}_ft.pt"


def info_name(extractor: str) -> str:
    """What the checkpoint is: base weights, epoch, validation metrics, inputs."""
    return f"{extractor}_ft.json"


def extract_config_name(extractor: str) -> str:
    """Extraction config whose ``extractors.<extractor>`` loads the checkpoint."""
    return f"extract_{extractor}_ft.yaml"


CLIP_FT, CLIP_FT_INFO, EXTRACT_CONFIG = checkpoint_name("clip"), info_name("clip"), extract_config_name("clip")


@dataclass
class FinetuneLossConfig:
    type: str = "triplet"  # triplet (LAFF: hardest negative, cosine) | infonce (CLIP4Clip, CLIP's logit scale)
    margin: float = 0.2  # triplet
    direction: str = "t2v"  # triplet: t2v (LAFF) | v2t | both
    hardest: bool = True  # triplet: hardest negative (VSE++) instead of the sum over all


@dataclass
class FinetuneConfig:
    extractor: str = "clip"  # the extractor whose network is trained (any registered one)
    # the CLIP to start from and how its frames are sampled/preprocessed (the extractor's schema);
    # for another extractor, the CLIP whose text tower scores the captions
    clip: ClipConfig = field(
        default_factory=lambda: ClipConfig(sampling=SamplingConfig(kind="uniform", num_frames=8))
    )
    video: Optional[Any] = None  # extractors.<extractor> settings when extractor is not clip
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    loss: FinetuneLossConfig = field(default_factory=FinetuneLossConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(recipe="dllfa"))
    clip_lr_scale: float = 0.01  # every tower's lr = optim.lr * clip_lr_scale (LAFF: base / 100)
    epochs: int = 10
    batch_size: int = 64  # videos per batch (each with captions_per_video captions)
    captions_per_video: int = 1  # captions of a video drawn per epoch; 0 = all of them
    accum_steps: int = 1  # batches whose gradients add up to one optimiser step
    seed: int = 0
    early_stop: int = 3  # stop after this many epochs without improvement of val_metric; 0 = never
    val_metric: str = "t2v/mIR"
    val_batch_size: int = 32  # videos per forward pass in validation
    validate_before: bool = True  # validate the starting model first (metrics.jsonl epoch 0)
    cache_frames: bool = False  # decode each video once and keep its frames in memory (num_workers 0)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16 + grad scaling)
    num_workers: int = 0  # DataLoader processes decoding videos


ClipFtLossConfig, ClipFtConfig = FinetuneLossConfig, FinetuneConfig  # the names of the clip-ft stage


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
class FinetuneData:
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
class FinetuneResult(TrainResult):
    """A fusion run's result, plus what only fine-tuning has."""

    checkpoint: Path  # RUN/<extractor>_ft.pt
    baseline_val: dict  # the starting model's validation metrics (epoch 0), {} when not measured
    failed: dict[str, str]  # video id -> why it could not be decoded (over all epochs)


class FinetuneDataError(VidfuseError):
    """Videos, captions and splits that do not fit together."""


ClipFtData, ClipFtResult, ClipFtDataError = FinetuneData, FinetuneResult, FinetuneDataError


# --- config ------------------------------------------------------------------------------------


def video_settings(cfg: FinetuneConfig) -> Any:
    """The trained extractor's settings (its registry schema): ``clip`` for CLIP, else ``video``."""
    from extractors.registry import available_extractors, validate_config

    if cfg.extractor not in available_extractors():
        raise ConfigError(f"extractor {cfg.extractor!r} is unknown (choose from {', '.join(available_extractors())})")
    if cfg.extractor == "clip":
        if cfg.video is not None:
            raise ConfigError("video: the clip extractor's settings are the clip section (leave video unset)")
        return cfg.clip
    return validate_config(cfg.extractor, cfg.video)


def resolve_finetune_config(cfg: FinetuneConfig) -> FinetuneConfig:
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
    section = "clip" if cfg.extractor == "clip" else "video"
    settings = video_settings(cfg)
    try:
        sampling = validate_sampling(settings.sampling)
    except ConfigError as exc:
        raise ConfigError(f"{section}.{exc}") from None
    from extractors.registry import extractor_class

    wanted = "uniform" if extractor_class(cfg.extractor).level == "frame" else "clips"
    if sampling.kind != wanted:
        raise ConfigError(
            f"{section}.sampling.kind must be {wanted!r} for fine-tuning {cfg.extractor} (training draws "
            + ("one random frame per segment" if wanted == "uniform" else "random clip starts")
            + f", validation takes the extractor's own), got {sampling.kind!r}"
        )
    out = copy.deepcopy(cfg)
    if cfg.extractor != "clip":
        out.video = config_to_dict(settings)
    out.optim = resolve_optim(cfg.optim, "meanp")
    return out


resolve_clip_ft_config = resolve_finetune_config


# --- data --------------------------------------------------------------------------------------


def _shown(ids: Sequence[str]) -> str:
    ids = list(ids)
    return ", ".join(ids[:_SHOWN]) + (f", ... ({len(ids) - _SHOWN} more)" if len(ids) > _SHOWN else "")


def _video_set(split_ids: Sequence[str], by_video: dict[str, list[str]], files: dict[str, str]) -> VideoSet:
    wanted = [v for v in split_ids if by_video.get(v)]
    present = [v for v in wanted if v in files]
    return VideoSet(ids=present, paths=[files[v] for v in present], captions=[by_video[v] for v in present],
                    missing=[v for v in wanted if v not in files])


def load_finetune_data(videos_dir: str, captions: str, splits: Optional[str] = None,
                      extensions: Sequence[str] = DecodeConfig().extensions) -> FinetuneData:
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
        raise FinetuneDataError(
            f"none of the {len(wanted)} train videos with captions in {captions} is under {videos_dir} "
            f"(looked for ids {_shown(wanted)}; the folder has {len(files)} videos, e.g. {_shown(sorted(files)[:3])})"
            if wanted else f"no caption of {captions} belongs to a video of the train split"
        )
    for name, vs in (("train", train), ("val", val)):
        if vs.missing:
            log.warning("%d of %d %s videos with captions are not under %s and are left out: %s",
                        len(vs.missing), len(vs.missing) + len(vs), name, videos_dir, _shown(vs.missing))
    return FinetuneData(train=train, val=val, videos_dir=str(videos_dir), captions_path=str(captions),
                      splits_dir=splits)


load_clip_ft_data = load_finetune_data


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


def random_clip_indices(num_frames: int, sampling: SamplingConfig, rng: np.random.Generator) -> np.ndarray:
    """Training twin of clip sampling: [clips, clip_len] indices, clip k starting at a random
    frame of the k-th equal share of the possible starts (evaluation spaces them evenly)."""
    if int(num_frames) < 1:
        raise ValueError(f"cannot sample from a video with {num_frames} frames")
    span = (sampling.clip_len - 1) * sampling.stride + 1
    room = max(int(num_frames) - span, 0)  # last possible start
    k = np.arange(sampling.clips, dtype=np.float64)
    starts = np.minimum(np.floor((k + rng.random(sampling.clips)) * (room + 1) / sampling.clips), room)
    idx = starts.astype(np.int64)[:, None] + np.arange(sampling.clip_len, dtype=np.int64)[None, :] * sampling.stride
    return np.minimum(idx, num_frames - 1)


def random_indices(sampling: SamplingConfig, num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Random training frames for a sampling (``uniform`` or ``clips``)."""
    if sampling.kind == "clips":
        return random_clip_indices(num_frames, sampling, rng)
    return random_segment_indices(num_frames, sampling.num_frames, rng)


class VideoFrames(torch.utils.data.Dataset):
    """Item i: (i, preprocessed units [U, ...] or None, failure reason or None).

    ``epoch`` None: the sampling's own frames (validation); otherwise random frames drawn
    from (seed, epoch, i), so they do not depend on DataLoader workers or order. ``cache``
    (a dict shared across epochs): every frame of a video is decoded once and kept there.
    """

    def __init__(self, paths: Sequence[str], sampling: SamplingConfig, transform, decode: DecodeConfig,
                 seed: int = 0, epoch: Optional[int] = None, cache: Optional[dict] = None):
        self.paths, self.sampling, self.transform = list(paths), sampling, transform
        self.backend, self.fallback = decode.backend, decode.fallback
        self.seed, self.epoch, self.cache = seed, epoch, cache

    def __len__(self) -> int:
        return len(self.paths)

    def indices(self, i: int, num_frames: int) -> np.ndarray:
        if self.epoch is None:
            return sample_indices(self.sampling, num_frames)
        return random_indices(self.sampling, num_frames, np.random.default_rng([self.seed, self.epoch, i]))

    def _frames(self, i: int) -> np.ndarray:
        from pipeline.decode import open_video

        if self.cache is not None and self.paths[i] in self.cache:
            frames = self.cache[self.paths[i]]
            return frames[self.indices(i, len(frames))]
        with open_video(self.paths[i], backend=self.backend, fallback=self.fallback) as reader:
            if self.cache is None:
                return reader.get_frames(self.indices(i, reader.info.num_frames))
            frames = self.cache[self.paths[i]] = reader.get_frames(np.arange(reader.info.num_frames))
        return frames[self.indices(i, len(frames))]

    def __getitem__(self, i: int):
        from pipeline.decode import VideoDecodeError

        try:
            return i, self.transform(self._frames(i)), None
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


class FinetuneModel(torch.nn.Module):
    """The trained extractor's network beside the CLIP whose text tower embeds the captions.

    For the clip extractor both are one CLIP and ``proj`` is the identity; for another
    extractor ``proj`` maps its dims to CLIP's (trained with it, not part of the result).
    Units go through the extractor's own ``_forward``, so training sees what extraction writes.
    """

    def __init__(self, video, clip):
        super().__init__()
        self.clip = clip.model
        self.video = None if video is clip else video.model
        self.proj = torch.nn.Identity() if video is clip else torch.nn.Linear(video.dim, clip.dim)
        self.units = video._forward  # [N, ...] units -> [N, dim], as the extractor embeds them

    @property
    def logit_scale(self) -> torch.nn.Parameter:
        return self.clip.logit_scale


def video_embeddings(model: FinetuneModel, units: torch.Tensor) -> torch.Tensor:
    """[B, U, ...] -> [B, D]: l2n(proj(mean over units of the extractor's unit embedding)), float32.

    For CLIP (normalised features) this is l2n(mean over frames of l2n(frame embedding)).
    """
    b, u = units.shape[:2]
    per_unit = model.units(units.flatten(0, 1)).float().view(b, u, -1)
    return F.normalize(model.proj(per_unit.mean(dim=1)), dim=-1)


def text_embeddings(model: FinetuneModel, tokens: torch.Tensor) -> torch.Tensor:
    return F.normalize(model.clip.encode_text(tokens, normalize=True).float(), dim=-1)


def finetune_loss(model: FinetuneModel, text: torch.Tensor, video: torch.Tensor, positives: torch.Tensor,
                  cfg: FinetuneLossConfig) -> torch.Tensor:
    """The configured loss on cosine scores text x video [Bt, Bv] (``positives`` marks the pairs)."""
    scores = text @ video.t()
    if cfg.type == "triplet":
        return triplet_ranking_loss(scores, positives, cfg.margin, cfg.direction, cfg.hardest)
    return info_nce(model.logit_scale.exp().float() * scores, positives)


def build_start_model(name: str, settings: Any):
    """An extractor at the start of fine-tuning, built as the extraction job builds it
    (seeded, so random weights equal the extractor's); its model is unfrozen by the caller."""
    from extractors.registry import build_extractor

    return build_extractor(name, settings, device="cpu")


def build_finetune_model(cfg: FinetuneConfig):
    """(FinetuneModel, the trained extractor, the text CLIP extractor), every parameter trainable."""
    clip = build_start_model("clip", cfg.clip)
    video = clip if cfg.extractor == "clip" else build_start_model(cfg.extractor, video_settings(cfg))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # the projection's initialisation
        model = FinetuneModel(video, clip)
    model.requires_grad_(True)
    if cfg.loss.type != "infonce":
        model.logit_scale.requires_grad_(False)  # unused by the triplet loss: leave it as it was
    if model.video is not None:
        model.clip.visual.requires_grad_(False)  # only the text tower of the CLIP scores captions
    return model, video, clip


def save_extractor_checkpoint(model: FinetuneModel, cfg: FinetuneConfig, path: Path) -> None:
    """The trained extractor alone, as its ``pretrained: <path>`` loads it (written atomically)."""
    if model.video is None:
        save_clip_checkpoint(model.clip, cfg.clip, path)
        return
    state = {k: v.detach().cpu() for k, v in model.video.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"state_dict": state, "vidfuse_finetune": {"extractor": cfg.extractor}}, tmp)
    tmp.replace(path)


# --- validation --------------------------------------------------------------------------------


@torch.no_grad()
def encode_video_set(model: FinetuneModel, videos: VideoSet, transform, sampling: SamplingConfig,
                     decode: DecodeConfig, batch_size: int = 32, device: str | torch.device = "cpu",
                     num_workers: int = 0, amp: tuple[bool, torch.dtype] = (False, torch.float32),
                     progress: bool = False, cache: Optional[dict] = None
                     ) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """(embeddings [N, D] of the decoded videos, their indices in ``videos``, {id: reason} failed)."""
    device = torch.device(device)
    batches = [list(range(s, min(len(videos), s + batch_size))) for s in range(0, len(videos), batch_size)]
    loader = frame_loader(VideoFrames(videos.paths, sampling, transform, decode, cache=cache), batches, num_workers,
                          device)
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
def encode_captions(model: FinetuneModel, tokenizer, texts: Sequence[str], batch_size: int = 256,
                    device: str | torch.device = "cpu",
                    amp: tuple[bool, torch.dtype] = (False, torch.float32)) -> np.ndarray:
    device = torch.device(device)
    out = []
    for s in range(0, len(texts), batch_size):
        with torch.autocast(device.type, dtype=amp[1], enabled=amp[0]):
            out.append(text_embeddings(model, tokenizer(list(texts[s : s + batch_size])).to(device)).cpu())
    return torch.cat(out).numpy()


def zero_shot_metrics(model: FinetuneModel, tokenizer, transform, videos: VideoSet, sampling: SamplingConfig,
                      decode: Optional[DecodeConfig] = None, batch_size: int = 32, text_batch_size: int = 256,
                      device: str | torch.device = "cpu", num_workers: int = 0,
                      amp: tuple[bool, torch.dtype] = (False, torch.float32), progress: bool = False,
                      cache: Optional[dict] = None) -> ZeroShot:
    """t2v/v2t metrics of the captions of ``videos`` by cosine of CLIP text vs the video embedding.

    No head: what the extractor's features and the clip text features give as they are.
    Videos that fail to decode are left out with their captions (listed in ``failed``).
    """
    from index.metrics import inner_product_rows, t2v_v2t_metrics

    decode = decode or DecodeConfig()
    was_training = model.training
    model.eval()
    try:
        video_emb, kept, failed = encode_video_set(model, videos, transform, sampling, decode, batch_size, device,
                                                   num_workers, amp, progress, cache)
        if len(kept) == 0:
            raise FinetuneDataError(f"none of the {len(videos)} validation videos could be decoded: {_shown(failed)}")
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


def write_extract_config(cfg: FinetuneConfig, checkpoint: Path, path: Path) -> None:
    """An extraction config whose ``extractors.<extractor>`` loads ``checkpoint`` with the run's sampling."""
    settings = config_to_dict(video_settings(cfg))
    settings["pretrained"] = str(Path(checkpoint).resolve())
    if cfg.extractor == "clip":
        settings["quick_gelu"] = None  # read from the checkpoint
        text = TextConfig(encoders=["clip"])
    else:
        text = TextConfig(encoders=[])
    extract = ExtractConfig(decode=copy.deepcopy(cfg.decode), extractors={cfg.extractor: settings}, text=text)
    tmp = path.with_name(f".{path.name}.tmp")
    save_config(extract, tmp)
    tmp.replace(path)


def _warn_failed(what: str, failed: dict[str, str], total: int) -> None:
    if failed:
        shown = "; ".join(f"{v} ({r})" for v, r in list(failed.items())[:_SHOWN])
        more = f"; ... ({len(failed) - _SHOWN} more)" if len(failed) > _SHOWN else ""
        log.warning("%s: skipped %d of %d videos that could not be decoded: %s%s", what, len(failed), total, shown,
                    more)


class _FinetuneEpochs:
    """What one epoch of fine-tuning is, for :func:`fusion.loop.run_epochs`."""

    def __init__(self, cfg: FinetuneConfig, data: FinetuneData, model: FinetuneModel, video, tokenizer, optimizer,
                 lr_ctrl: LrController, scaler, amp: tuple[bool, torch.dtype], device: torch.device, out: Path,
                 failed: dict[str, str], progress: bool):
        self.cfg, self.data, self.model, self.tokenizer = cfg, data, model, tokenizer
        self.optimizer, self.lr_ctrl, self.scaler, self.amp, self.device = optimizer, lr_ctrl, scaler, amp, device
        self.out, self.failed, self.progress = out, failed, progress
        self.base_weights, self.transform = video.weights, video.unit_transform
        self.sampling = video_settings(cfg).sampling
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.cache: Optional[dict] = {} if cfg.cache_frames and cfg.num_workers == 0 else None
        self.best_path = out / checkpoint_name(cfg.extractor)
        self.history: list[dict] = []

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the epoch's video batches: loss, lr, videos skipped, units trained on.

        Gradients of ``cfg.accum_steps`` batches add up to one optimiser step (the last one of
        the epoch steps with what it has); the logit scale stays at most ln 100, as in CLIP.
        """
        cfg, model, device, videos = self.cfg, self.model, self.device, self.data.train
        t0 = time.time()
        caption_rng = np.random.default_rng([epoch_seed(cfg.seed, epoch), 1])
        model.train()
        batches = epoch_batches(np.arange(len(videos)), cfg.batch_size, cfg.seed, epoch)
        dataset = VideoFrames(videos.paths, self.sampling, self.transform, cfg.decode, cfg.seed, epoch, self.cache)
        loader = frame_loader(dataset, batches, cfg.num_workers, device)
        failed: dict[str, str] = {}
        total, n, units_seen = 0.0, 0, 0
        pending = False  # gradients accumulated since the last optimiser step
        self.optimizer.zero_grad(set_to_none=True)
        bar = tqdm(loader, total=len(batches), leave=False, desc=f"epoch {epoch}", unit="batch",
                   disable=not self.progress)
        for step, (idx, units, bad_videos) in enumerate(bar, 1):
            failed.update({videos.ids[i]: reason for i, reason in bad_videos})
            if units is not None:
                texts, positives = batch_captions(videos, idx.numpy(), cfg.captions_per_video, caption_rng)
                tokens = self.tokenizer(texts).to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=self.amp[1], enabled=self.amp[0]):
                    video = video_embeddings(model, units.to(device, non_blocking=True))
                    text = text_embeddings(model, tokens)
                    loss = finetune_loss(model, text, video, positives.to(device), cfg.loss)
                self.scaler.scale(loss / cfg.accum_steps).backward()
                pending = True
                total += float(loss.detach())
                n += 1
                units_seen += units.shape[0] * units.shape[1]
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            if pending and (step % cfg.accum_steps == 0 or step == len(batches)):
                optimizer_step(self.optimizer, self.scaler, self.trainable, cfg.optim.grad_clip)
                with torch.no_grad():
                    model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
                self.lr_ctrl.step()
                pending = False
        bar.close()
        _warn_failed(f"epoch {epoch}", failed, len(videos))
        self.failed.update(failed)
        return {"loss": total / max(n, 1), "lr": self.lr_ctrl.lr, "skipped": len(failed), "frames": units_seen,
                "train_s": round(time.time() - t0, 3)}

    def zero_shot(self) -> ZeroShot:
        cfg = self.cfg
        result = zero_shot_metrics(self.model, self.tokenizer, self.transform, self.data.val, self.sampling,
                                   cfg.decode, cfg.val_batch_size, cfg.clip.text_batch_size, self.device,
                                   cfg.num_workers, self.amp, self.progress, self.cache)
        _warn_failed("validation", result.failed, len(self.data.val))
        self.failed.update(result.failed)
        return result

    def validate(self) -> tuple[dict, dict]:
        zs = self.zero_shot()
        return zs.metrics, {"val_skipped": len(zs.failed)}

    def save_best(self, epoch: int, value: Optional[float], val: dict) -> None:
        cfg, data = self.cfg, self.data
        save_extractor_checkpoint(self.model, cfg, self.best_path)

        def resolved(path: Optional[str]) -> Optional[str]:
            return str(Path(path).resolve()) if path else None

        model = video_settings(cfg)
        _write_json(self.out / info_name(cfg.extractor), {
            "checkpoint": str(self.best_path.resolve()), "extractor": cfg.extractor,
            "model": getattr(model, "model", None) or getattr(model, "variant", None) or cfg.extractor,
            "base_weights": self.base_weights, "epoch": epoch, "metric_name": cfg.val_metric, "best_metric": value,
            "val": val,
            "baseline_val": next(({k: r[k] for k in ("t2v", "v2t")} for r in self.history if r.get("baseline")), {}),
            "videos": resolved(data.videos_dir), "captions": resolved(data.captions_path),
            "splits": resolved(data.splits_dir), "train_videos": len(data.train), "val_videos": len(data.val),
            "missing_videos": {"train": len(data.train.missing), "val": len(data.val.missing)},
        })
        write_extract_config(cfg, self.best_path, self.out / extract_config_name(cfg.extractor))

    def end_epoch(self, improved: bool, value: Optional[float]) -> None:
        self.lr_ctrl.end_epoch(improved, value)

    def state(self) -> dict:
        return {"finetune": self.cfg.extractor, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "lr": self.lr_ctrl.state_dict(),
                "scaler": self.scaler.state_dict(), "failed": dict(self.failed)}


def _check_finetune_state(extractor: str, path: Path):
    def check(state: dict) -> None:
        if state.get("finetune") != extractor:
            what = f"a finetune run of {state['finetune']}" if "finetune" in state else "a fusion run?"
            raise CheckpointError(f"{path} is not a finetune checkpoint of {extractor} ({what})")
    return check


def finetune(cfg: FinetuneConfig, data: FinetuneData, out_dir: str | Path, resume: bool = True,
             progress: bool = True, stop_after: Optional[int] = None) -> FinetuneResult:
    """Fine-tune ``cfg.extractor`` on ``data.train``; the best validation epoch goes to
    ``out_dir/<extractor>_ft.pt``.

    ``resume``: continue from ``out_dir/last.pt`` when present (refused when settings that
    shape the trajectory differ). ``stop_after``: return after this epoch as if killed.
    """
    cfg = resolve_finetune_config(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    cfg_dict = config_to_dict(cfg)
    last_path, metrics_path = out / LAST, out / "metrics.jsonl"
    state = load_resume_state(last_path, cfg_dict, RESUMABLE_CHANGES,
                              _check_finetune_state(cfg.extractor, last_path)) if resume else None

    model, video, clip = build_finetune_model(cfg)
    model.to(device).train()
    tower_optim = dataclasses.replace(cfg.optim, lr=cfg.optim.lr * cfg.clip_lr_scale)
    no_decay = {n for n, p in model.named_parameters() if n.endswith("positional_embedding") or "logit_scale" in n}
    optimizer = build_optimizer(model, tower_optim, no_decay)
    steps_per_epoch = math.ceil(len(epoch_batches(np.arange(len(data.train)), cfg.batch_size, cfg.seed, 1))
                                / cfg.accum_steps)
    lr_ctrl = LrController(optimizer, tower_optim, cfg.epochs * steps_per_epoch,
                           lower_is_better=cfg.val_metric.split("/")[-1] in LOWER_IS_BETTER)
    use_amp, amp_dtype = amp_settings(cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    loop, failed = LoopState(), {}
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        lr_ctrl.load_state_dict(state["lr"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        failed = dict(state["failed"])
        loop = LoopState.restore(state, metrics_path)
        log.info("resuming %s after epoch %d (best %s=%.4f at epoch %d)", out, loop.epoch, cfg.val_metric,
                 loop.best if loop.best is not None else float("nan"), loop.best_epoch)
    save_config(cfg, out / "config.yaml")
    write_history(metrics_path, loop.history)

    task = _FinetuneEpochs(cfg, data, model, video, clip.tokenizer, optimizer, lr_ctrl, scaler, (use_amp, amp_dtype),
                           device, out, failed, progress)
    task.history = loop.history
    has_val = len(data.val) > 0
    if not has_val:
        log.warning("no validation videos: the last epoch is kept as the best checkpoint")
    if state is None and has_val and cfg.validate_before:
        zs = task.zero_shot()
        loop.history.append({"epoch": 0, "baseline": True, **zs.metrics, "val_skipped": len(zs.failed),
                             "val_metric": metric_value(zs.metrics, cfg.val_metric), "best": False})
        write_history(metrics_path, loop.history)
        log.info("before fine-tuning: %s %.4f, t2v R@1 %.1f", cfg.val_metric, loop.history[-1]["val_metric"],
                 zs.metrics["t2v"]["R@1"])

    loop = run_epochs(task, loop, epochs=cfg.epochs, seed=cfg.seed, val_metric=cfg.val_metric,
                      early_stop=cfg.early_stop, has_val=has_val, metrics_path=metrics_path, last_path=last_path,
                      last_extra={"config": cfg_dict}, desc=f"finetune {cfg.extractor}", progress=progress,
                      stop_after=stop_after)
    best_record, baseline = loop.record(loop.best_epoch), next((r for r in loop.history if r.get("baseline")), {})
    return FinetuneResult(
        run_dir=out, checkpoint=task.best_path, best_epoch=loop.best_epoch,
        best_metric=loop.best if loop.best is not None else float("nan"), metric_name=cfg.val_metric,
        epochs_run=loop.epoch, stopped_early=loop.stopped, history=loop.history,
        best_val={k: best_record[k] for k in ("t2v", "v2t") if k in best_record},
        baseline_val={k: baseline[k] for k in ("t2v", "v2t") if k in baseline}, failed=task.failed,
    )


finetune_clip = finetune


def run_finetune(cfg: FinetuneConfig, videos_dir: str, captions: str, out_dir: str, splits: Optional[str] = None,
                 resume: bool = True, progress: bool = True, stop_after: Optional[int] = None) -> FinetuneResult:
    """``vidfuse finetune``: read the inputs, then :func:`finetune`."""
    cfg = resolve_finetune_config(cfg)  # bad settings before any file is read
    data = load_finetune_data(videos_dir, captions, splits, cfg.decode.extensions)
    log.info("finetune %s: %d train videos (%d captions), %d val videos (%d captions)", cfg.extractor,
             len(data.train), data.train.num_captions, len(data.val), data.val.num_captions)
    return finetune(cfg, data, out_dir, resume=resume, progress=progress, stop_after=stop_after)


run_finetune_clip = run_finetune
