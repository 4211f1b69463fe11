"""Frames -> model input in plain torch: resize the shorter side, centre crop, normalise.

``pytorchvideo.transforms`` does not import with current torchvision, and PIL per frame is slow,
so this is the one place where decoded uint8 frames become float tensors. It runs in the decode
step (CPU), chunked so a batch of large frames never exists in float all at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

_CHUNK = 16  # frames converted to float at once


@dataclass(frozen=True)
class FrameTransform:
    """Shorter side -> ``resize`` (aspect kept), centre ``crop`` x ``crop``, (x/255 - mean)/std."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"  # bilinear (pytorchvideo) | bicubic (CLIP)

    def __post_init__(self) -> None:
        if self.crop <= 0 or self.resize < self.crop:
            raise ValueError(f"need 0 < crop <= resize, got crop={self.crop} resize={self.resize}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"interpolation must be bilinear or bicubic, got {self.interpolation!r}")

    def describe(self) -> dict:
        return {
            "resize": self.resize,
            "crop": self.crop,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 [N, H, W, 3] RGB -> float32 [N, 3, crop, crop] on CPU."""
        check_frames(frames)
        n, h, w, _ = frames.shape
        new_h, new_w = resized_shape(h, w, self.resize)
        top, left = (new_h - self.crop) // 2, (new_w - self.crop) // 2
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        out = torch.empty((n, 3, self.crop, self.crop), dtype=torch.float32)
        for start in range(0, n, _CHUNK):
            x = torch.from_numpy(np.ascontiguousarray(frames[start : start + _CHUNK]))
            x = x.permute(0, 3, 1, 2).float()
            if (new_h, new_w) != (h, w):
                x = F.interpolate(
                    x, size=(new_h, new_w), mode=self.interpolation, align_corners=False, antialias=True
                )
                x = x.clamp_(0.0, 255.0)  # bicubic overshoots
            x = x[:, :, top : top + self.crop, left : left + self.crop]
            out[start : start + x.shape[0]] = (x - mean) / std
        return out


def check_frames(frames: np.ndarray) -> None:
    """Frames as the decoders deliver them; anything else is a bug upstream, said plainly."""
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3:
        shape = getattr(frames, "shape", None)
        raise ValueError(f"expected frames as a numpy array [N, H, W, 3], got {type(frames).__name__} {shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB frames, got dtype {frames.dtype}")
    if frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] == 0:
        raise ValueError(f"empty frames array {frames.shape}")


def resized_shape(h: int, w: int, short_side: int) -> tuple[int, int]:
    """(h, w) scaled so that min(h, w) == short_side; the long side rounds, never below short_side."""
    if h <= w:
        return short_side, max(short_side, int(round(w * short_side / h)))
    return max(short_side, int(round(h * short_side / w))), short_side


def frames_to_clips(x: torch.Tensor, clip_len: int) -> torch.Tensor:
    """[C*L, 3, S, S] frames in clip order -> [C, 3, L, S, S], the layout of 3D CNNs."""
    if x.shape[0] % clip_len:
        raise ValueError(f"{x.shape[0]} frames do not split into clips of {clip_len}")
    c = x.shape[0] // clip_len
    return x.reshape(c, clip_len, *x.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()


def as_tuple3(values: Sequence[float]) -> tuple[float, float, float]:
    vals = tuple(float(v) for v in values)
    if len(vals) != 3:
        raise ValueError(f"expected 3 channel values, got {list(values)}")
    return vals  # type: ignore[return-value]
