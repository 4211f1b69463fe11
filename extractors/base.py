"""The contract every video extractor keeps, so the extraction job treats them all alike.

Life of a video: ``sample_indices`` (which frames to decode) -> the decoder reads them ->
``preprocess`` (uint8 frames -> model units, CPU, cheap, runs in the decode step) ->
``embed`` (units of any number of videos at once -> one vector per unit) -> ``pool``
(unit vectors of one video -> the video vector). ``describe`` feeds the manifest.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Optional

import numpy as np
import torch

from extractors.preprocess import ClipTransform, frames_to_clips
from pipeline.sampling import describe_sampling, sample_indices, validate_sampling
from vidfuse.errors import ConfigError

log = logging.getLogger(__name__)

LEVELS = ("frame", "clip")


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else as torch understands it."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {device!r} is not a torch device ({exc})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    return resolved


class VideoExtractor(ABC):
    """A frozen model that turns sampled frames of a video into a feature vector.

    Subclasses set ``name``, ``level`` ("frame": units are frames [T,3,S,S]; "clip": units
    are clips [C,3,L,S,S]) and ``Config`` (a dataclass with at least ``sampling``,
    ``pretrained`` and ``batch_size``), build ``self.model`` and ``self.dim`` in
    ``__init__`` and implement ``preprocess`` and ``_forward``. The model is in eval mode
    and frozen, so the same frames give the same features.
    """

    name: ClassVar[str]
    level: ClassVar[str]
    Config: ClassVar[type]

    config: Any
    device: torch.device
    dim: int
    model: torch.nn.Module
    weights: str  # "random", a tag, or a checkpoint path: what describe() reports

    precision: str = "fp32"

    def __init__(self, config: Any, device: str | torch.device = "auto"):
        self.config = config
        self.device = resolve_device(device)
        type(self).check_config(config)

    # --- config ---------------------------------------------------------------------------
    @classmethod
    def check_config(cls, config: Any) -> None:
        """Refuse settings the model cannot run with; cheap, builds nothing (subclasses add theirs)."""
        try:
            validate_sampling(config.sampling)
        except ConfigError as exc:
            raise ConfigError(f"extractor {cls.name!r}: {exc}") from None
        kind = config.sampling.kind
        if cls.level == "clip" and kind != "clips":
            raise ConfigError(
                f"extractor {cls.name!r}: a clip-level model needs sampling.kind: clips, got {kind!r}"
            )
        if cls.level == "frame" and kind == "clips":
            raise ConfigError(
                f"extractor {cls.name!r}: a frame-level model needs sampling.kind uniform or fps, got 'clips'"
            )
        if config.batch_size < 1:
            raise ConfigError(f"extractor {cls.name!r}: batch_size must be >= 1, got {config.batch_size}")

    @classmethod
    def describe_config(cls, config: Any) -> dict:
        """The manifest fields (model, weights, dim, level, sampling) from the config and the
        weights file alone: the launcher describes every extractor without building one (CLIP
        alone took 4.7 s to build). Equal to ``describe()`` of the built extractor."""
        cls.check_config(config)
        return {
            "extractor": cls.name,
            "model": cls.model_name_for(config),
            "weights": cls.weights_label(config),
            "dim": int(cls.dim_for(config)),
            "level": cls.level,
            "sampling": describe_sampling(config.sampling),
        }

    @classmethod
    def model_name_for(cls, config: Any) -> str:
        return cls.name

    @classmethod
    def dim_for(cls, config: Any) -> int:
        raise NotImplementedError(cls)

    @classmethod
    def weights_label(cls, config: Any) -> str:
        """What ``weights`` the built model reports: "random", a tag, or a checkpoint path
        (a path that does not exist, or an unknown tag, is refused here)."""
        raise NotImplementedError(cls)

    def sample_indices(self, num_frames: int, frame_times: Optional[np.ndarray] = None) -> np.ndarray:
        """Frame indices to decode: 1-D for frame level, [clips, clip_len] for clip level."""
        return sample_indices(self.config.sampling, num_frames, frame_times)

    # --- model ----------------------------------------------------------------------------
    @classmethod
    def frame_transform_for(cls, config: Any):
        """The extractors.preprocess.FrameTransform of ``config``, without building the model
        (the extraction job resizes right after decoding with it)."""
        raise NotImplementedError(cls)

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 [N,H,W,3] frames in the flattened order of the indices -> float units on CPU."""
        return self.units(self.transform.resize_crop(frames))

    def units(self, resized: torch.Tensor) -> torch.Tensor:
        """uint8 [N,3,S,S] frames at the model's resolution -> float units (frames: [N,3,S,S])."""
        return self.transform.normalise(resized)

    @property
    def unit_transform(self):
        """A picklable callable doing what ``preprocess`` does (DataLoader workers need no model)."""
        return self.transform

    @abstractmethod
    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch of units already on ``self.device`` -> [B, dim]."""

    def _finish_model(self) -> None:
        """Eval mode, no gradients, on the device: call at the end of a subclass __init__."""
        self.model.eval().requires_grad_(False).to(self.device)

    def set_precision(self, precision: str) -> None:
        """fp32 (exact), or bf16 / fp16 under autocast on the model's device; on CUDA the
        model also goes channels_last (convolutions pick faster kernels)."""
        if precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
        self.precision = precision
        if self.device.type == "cuda":
            self.model.to(memory_format=self._layout())

    def _layout(self) -> torch.memory_format:
        return torch.channels_last_3d if self.level == "clip" else torch.channels_last

    def _autocast(self):
        import contextlib

        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def embed(self, units: torch.Tensor) -> np.ndarray:
        """Units [B, ...] -> float32 [B, dim], in chunks of ``config.batch_size``.

        On CUDA the units are copied from pinned memory, so ``non_blocking`` really overlaps
        the copy of one chunk with the forward pass of the one before.
        """
        if units.ndim < 1 or units.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.device.type == "cuda":
            units = units.pin_memory()
        outputs = []
        with torch.inference_mode(), self._autocast():
            for start in range(0, units.shape[0], self.config.batch_size):
                batch = units[start : start + self.config.batch_size].to(self.device, non_blocking=True)
                if self.device.type == "cuda":
                    batch = batch.contiguous(memory_format=self._layout())
                outputs.append(self._forward(batch.float()).float().cpu())
        return torch.cat(outputs).numpy().astype(np.float32, copy=False)

    def pool(self, unit_features: np.ndarray) -> np.ndarray:
        """[T or C, dim] -> [dim]: the mean over units, not re-normalised (see subclasses)."""
        unit_features = np.asarray(unit_features, dtype=np.float32)
        if unit_features.ndim != 2 or unit_features.shape[0] == 0 or unit_features.shape[1] != self.dim:
            raise ValueError(f"{self.name}: expected unit features [n>0, {self.dim}], got {unit_features.shape}")
        return unit_features.mean(axis=0).astype(np.float32)

    # --- manifest -------------------------------------------------------------------------
    def model_name(self) -> str:
        """Architecture as recorded in the manifest (e.g. ``ViT-B-32``, ``x3d_l``)."""
        return self.name

    def describe(self) -> dict:
        return {
            "extractor": self.name,
            "model": self.model_name(),
            "weights": self.weights,
            "dim": int(self.dim),
            "level": self.level,
            "sampling": describe_sampling(self.config.sampling),
            **self._describe_extra(),
        }

    def _describe_extra(self) -> dict:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model_name()!r}, weights={self.weights!r}, dim={self.dim}, device={self.device})"


class ClipLevelExtractor(VideoExtractor):
    """Shared by 3D CNNs: frames -> ``self.transform`` -> clips [C, 3, L, S, S]."""

    level = "clip"
    transform: Any  # extractors.preprocess.FrameTransform

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 [C*L,H,W,3] (clip-major, as the indices flatten) or [C,L,H,W,3] -> [C,3,L,S,S]."""
        return self.unit_transform(frames)

    @property
    def unit_transform(self) -> ClipTransform:
        return ClipTransform(self.transform, self.config.sampling.clip_len, self.name)

    def units(self, resized: torch.Tensor) -> torch.Tensor:
        """uint8 [C*L,3,S,S] clip-major frames -> [C,3,L,S,S] clips."""
        return frames_to_clips(self.transform.normalise(resized), self.config.sampling.clip_len)

    def _describe_extra(self) -> dict:
        return {"preprocess": self.transform.describe(), "pooling": "mean over clips"}
