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

from extractors.preprocess import ClipTransform
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

    def __init__(self, config: Any, device: str | torch.device = "auto"):
        self.config = config
        self.device = resolve_device(device)
        self._check_sampling()

    # --- sampling -------------------------------------------------------------------------
    def _check_sampling(self) -> None:
        try:
            validate_sampling(self.config.sampling)
        except ConfigError as exc:
            raise ConfigError(f"extractor {self.name!r}: {exc}") from None
        kind = self.config.sampling.kind
        if self.level == "clip" and kind != "clips":
            raise ConfigError(
                f"extractor {self.name!r}: a clip-level model needs sampling.kind: clips, got {kind!r}"
            )
        if self.level == "frame" and kind == "clips":
            raise ConfigError(
                f"extractor {self.name!r}: a frame-level model needs sampling.kind uniform or fps, got 'clips'"
            )
        if self.config.batch_size < 1:
            raise ConfigError(f"extractor {self.name!r}: batch_size must be >= 1, got {self.config.batch_size}")

    def sample_indices(self, num_frames: int, frame_times: Optional[np.ndarray] = None) -> np.ndarray:
        """Frame indices to decode: 1-D for frame level, [clips, clip_len] for clip level."""
        return sample_indices(self.config.sampling, num_frames, frame_times)

    # --- model ----------------------------------------------------------------------------
    @abstractmethod
    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 [N,H,W,3] frames in the flattened order of the indices -> float units on CPU."""

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

    def embed(self, units: torch.Tensor) -> np.ndarray:
        """Units [B, ...] -> float32 [B, dim], in chunks of ``config.batch_size``."""
        if units.ndim < 1 or units.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        outputs = []
        with torch.inference_mode():
            for start in range(0, units.shape[0], self.config.batch_size):
                batch = units[start : start + self.config.batch_size].to(self.device, non_blocking=True)
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

    def _describe_extra(self) -> dict:
        return {"preprocess": self.transform.describe(), "pooling": "mean over clips"}
