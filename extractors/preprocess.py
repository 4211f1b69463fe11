"""Frames -> model input: resize the shorter side, centre crop, normalise (torchvision tensor ops).

``pytorchvideo.transforms`` does not import with current torchvision, and PIL per frame is slow,
so this is the one place where decoded uint8 frames become float tensors. Resizing happens on
uint8 with antialiasing, which matches PIL (what CLIP and the Kinetics models were trained
with) to within one grey level and is several times faster than resizing floats. It runs in
the decode step (CPU), chunked so a batch of large frames never exists in float all at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

_CHUNK = 16  # frames converted to float at once
RESIZE_MODES = ("shortest", "squash")


@dataclass(frozen=True)
class FrameTransform:
    """Shorter side -> ``resize`` (aspect kept), centre ``crop`` x ``crop``, (x/255 - mean)/std.

    ``resize_mode`` "squash" (open_clip's, e.g. SigLIP's weights) resizes to ``crop`` x ``crop``
    without keeping the aspect ratio, and crops nothing.
    """

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"  # bilinear (pytorchvideo) | bicubic (CLIP)
    resize_mode: str = "shortest"  # shortest (resize + centre crop) | squash

    def __post_init__(self) -> None:
        if self.crop <= 0 or self.resize < self.crop:
            raise ValueError(f"need 0 < crop <= resize, got crop={self.crop} resize={self.resize}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"interpolation must be bilinear or bicubic, got {self.interpolation!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")

    def describe(self) -> dict:
        return {
            "resize": self.resize,
            "crop": self.crop,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            # only when not the default, so folders extracted before the option still match
            **({"resize_mode": self.resize_mode} if self.resize_mode != "shortest" else {}),
        }

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 [N, H, W, 3] RGB -> float32 [N, 3, crop, crop] on CPU."""
        return self.normalise(self.resize_crop(frames))

    def resize_crop(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 [N, H, W, 3] RGB -> uint8 [N, 3, crop, crop]: the model's resolution, still bytes.

        The extraction job runs this right after decoding, so no extractor keeps full-resolution
        frames until its model runs (a 1080p frame is 6 MB, a 224 crop 150 kB).
        """
        check_frames(frames)
        mode = InterpolationMode.BICUBIC if self.interpolation == "bicubic" else InterpolationMode.BILINEAR
        out = torch.empty((frames.shape[0], 3, self.crop, self.crop), dtype=torch.uint8)
        for start in range(0, frames.shape[0], _CHUNK):
            x = torch.from_numpy(np.ascontiguousarray(frames[start : start + _CHUNK])).permute(0, 3, 1, 2)
            if self.resize_mode == "squash":
                x = TF.resize(x, [self.crop, self.crop], interpolation=mode, antialias=True)
            else:
                x = TF.resize(x, [self.resize], interpolation=mode, antialias=True)  # shorter side, uint8
                x = TF.center_crop(x, [self.crop, self.crop])
            out[start : start + x.shape[0]] = x
        return out

    def normalise(self, resized: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, crop, crop] (from :meth:`resize_crop`) -> float32 (x/255 - mean)/std."""
        if resized.dtype != torch.uint8 or resized.ndim != 4 or tuple(resized.shape[1:]) != (3, self.crop, self.crop):
            raise ValueError(f"expected uint8 [N, 3, {self.crop}, {self.crop}], got {resized.dtype} {tuple(resized.shape)}")
        out = torch.empty(resized.shape, dtype=torch.float32)
        for start in range(0, resized.shape[0], _CHUNK):
            x = resized[start : start + _CHUNK]
            out[start : start + x.shape[0]] = TF.normalize(x.float().div_(255.0), list(self.mean), list(self.std))
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


def frames_to_clips(x: torch.Tensor, clip_len: int) -> torch.Tensor:
    """[C*L, 3, S, S] frames in clip order -> [C, 3, L, S, S], the layout of 3D CNNs."""
    if x.shape[0] % clip_len:
        raise ValueError(f"{x.shape[0]} frames do not split into clips of {clip_len}")
    c = x.shape[0] // clip_len
    return x.reshape(c, clip_len, *x.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()


class ClipTransform:
    """uint8 frames [C*L,H,W,3] (clip-major) or [C,L,H,W,3] -> clips [C,3,L,S,S].

    A plain picklable callable, so DataLoader workers can preprocess without the model.
    """

    def __init__(self, transform, clip_len: int, name: str = "clip-level model"):
        self.transform, self.clip_len, self.name = transform, int(clip_len), name

    def __call__(self, frames) -> torch.Tensor:
        if isinstance(frames, np.ndarray) and frames.ndim == 5:
            if frames.shape[1] != self.clip_len:
                raise ValueError(f"{self.name}: clips of {frames.shape[1]} frames, expected clip_len {self.clip_len}")
            frames = frames.reshape(-1, *frames.shape[2:])
        return frames_to_clips(self.transform(frames), self.clip_len)


def as_tuple3(values: Sequence[float]) -> tuple[float, float, float]:
    vals = tuple(float(v) for v in values)
    if len(vals) != 3:
        raise ValueError(f"expected 3 channel values, got {list(values)}")
    return vals  # type: ignore[return-value]
