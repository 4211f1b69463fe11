"""Which frames of a video an extractor sees (DESIGN §2), as pure index arithmetic.

Three kinds, declared per extractor in its config (``SamplingConfig`` is an OmegaConf
structured schema, so unknown keys are refused):

- ``uniform``: ``num_frames`` frames spread over the whole video, one at the centre of each
  of ``num_frames`` equal segments: ``floor((k + 0.5) * N / num_frames)``. This is the
  TSN/LAFF test-time rule; it never picks the very first/last frame (often black or a
  fade) and is symmetric. (CLIP4Clip's ``np.linspace(0, N-1, num)`` includes both ends;
  the two differ by at most half a segment.) If the video has fewer frames than
  requested, frames repeat so the output always has ``num_frames`` entries: batches of
  videos then stack into one tensor, and frame-level features keep a fixed T.
- ``fps``: one frame every ``1/fps`` seconds of presentation time, starting at the first
  frame: the frame on screen at t = 0, 1/fps, 2/fps, ... up to the last frame's time.
  Uses the real per-frame timestamps, so variable-frame-rate video is sampled evenly in
  time. A frame on screen across several sampling instants is picked each time.
  ``max_frames`` caps the count by uniform subsampling (segment centres again).
- ``clips``: ``clips`` windows of ``clip_len`` frames taken every ``stride`` frames (span
  ``(clip_len - 1) * stride + 1``). One clip sits at the centre of the video; several are
  spread evenly from the first frame to the last (the PySlowFast test-time rule). A
  window longer than the video starts at frame 0 and repeats the last frame.

All results are int64 indices in ``[0, num_frames)``; uniform/fps give 1-D arrays, clips
a 2-D ``[clips, clip_len]`` array.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from vidfuse.errors import ConfigError

KINDS = ("uniform", "fps", "clips")

# Frame times closer than this fraction of the median frame interval count as equal: it
# absorbs float32 timestamps (decord) without ever skipping a frame.
TIME_TOLERANCE = 0.01


@dataclass
class SamplingConfig:
    kind: str = "uniform"  # "uniform" | "fps" | "clips"
    num_frames: int = 8  # uniform: frames over the whole video (segment centres)
    fps: float = 1.0  # fps: frames per second of presentation time
    max_frames: Optional[int] = None  # fps: cap (uniform subsampling when exceeded)
    clip_len: int = 16  # clips: frames per window
    stride: int = 1  # clips: frame step inside a window
    clips: int = 1  # clips: windows per video


def _as_config(cfg: Any) -> SamplingConfig:
    if isinstance(cfg, SamplingConfig):
        return cfg
    if isinstance(cfg, Mapping):
        unknown = set(cfg) - set(SamplingConfig.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"sampling: unknown key(s) {sorted(unknown)}")
        return SamplingConfig(**dict(cfg))
    # an OmegaConf DictConfig or any object with the same attributes
    return SamplingConfig(**{name: getattr(cfg, name) for name in SamplingConfig.__dataclass_fields__})


def validate_sampling(cfg: Any) -> SamplingConfig:
    """The config as a :class:`SamplingConfig`, or ConfigError naming the bad field."""
    cfg = _as_config(cfg)
    if cfg.kind not in KINDS:
        raise ConfigError(f"sampling.kind must be one of {list(KINDS)}, got {cfg.kind!r}")

    def need_int(name: str, minimum: int = 1) -> None:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ConfigError(f"sampling.{name} must be an integer >= {minimum}, got {value!r}")

    if cfg.kind == "uniform":
        need_int("num_frames")
    elif cfg.kind == "fps":
        if isinstance(cfg.fps, bool) or not isinstance(cfg.fps, (int, float, np.integer, np.floating)) or not np.isfinite(cfg.fps) or cfg.fps <= 0:
            raise ConfigError(f"sampling.fps must be a number > 0, got {cfg.fps!r}")
        if cfg.max_frames is not None:
            need_int("max_frames")
    else:
        need_int("clip_len")
        need_int("stride")
        need_int("clips")
    return cfg


def describe_sampling(cfg: Any) -> dict:
    """The settings that determine the sampled frames, as a plain dict for manifests."""
    cfg = validate_sampling(cfg)
    if cfg.kind == "uniform":
        return {"kind": "uniform", "num_frames": int(cfg.num_frames), "rule": "segment_centres"}
    if cfg.kind == "fps":
        return {
            "kind": "fps",
            "fps": float(cfg.fps),
            "max_frames": None if cfg.max_frames is None else int(cfg.max_frames),
            "rule": "frame_on_screen_at_k_over_fps",
        }
    return {
        "kind": "clips",
        "clip_len": int(cfg.clip_len),
        "stride": int(cfg.stride),
        "clips": int(cfg.clips),
        "rule": "centre_if_one_else_even_first_to_last",
    }


def sample_indices(cfg: Any, num_frames: int, frame_times: np.ndarray | None = None) -> np.ndarray:
    """Frame indices to decode for a video of ``num_frames`` frames (see the module doc).

    ``frame_times`` (seconds per frame, from ``VideoReader.frame_times()``) is required for
    ``kind="fps"`` and ignored otherwise.
    """
    cfg = validate_sampling(cfg)
    if int(num_frames) < 1:
        raise ValueError(f"cannot sample from a video with {num_frames} frames")
    num_frames = int(num_frames)
    if cfg.kind == "uniform":
        return _segment_centres(num_frames, cfg.num_frames)
    if cfg.kind == "fps":
        if frame_times is None:
            raise ValueError("fps sampling needs frame_times (VideoReader.frame_times())")
        return _by_time(cfg, num_frames, np.asarray(frame_times, dtype=np.float64))
    return _clips(num_frames, cfg.clip_len, cfg.stride, cfg.clips)


def _segment_centres(n: int, count: int) -> np.ndarray:
    """floor((k + 0.5) * n / count) for k < count, in exact integer arithmetic."""
    k = np.arange(count, dtype=np.int64)
    return (2 * k + 1) * n // (2 * count)


def _by_time(cfg: SamplingConfig, n: int, times: np.ndarray) -> np.ndarray:
    if times.shape != (n,):
        raise ValueError(f"frame_times has shape {times.shape}, expected ({n},)")
    if n > 1 and np.any(np.diff(times) < 0):
        raise ValueError("frame_times must be non-decreasing (presentation order)")
    start = times[0]
    gaps = np.diff(times)
    positive = gaps[gaps > 0]
    tol = TIME_TOLERANCE * float(np.median(positive)) if positive.size else 0.0
    period = 1.0 / float(cfg.fps)
    count = int(np.floor((times[-1] - start + tol) / period)) + 1
    targets = start + np.arange(count, dtype=np.float64) * period
    # the frame on screen at each target: the last frame whose time <= target (+ tolerance)
    idx = np.searchsorted(times, targets + tol, side="right").astype(np.int64) - 1
    idx = np.clip(idx, 0, n - 1)
    if cfg.max_frames is not None and idx.size > cfg.max_frames:
        idx = idx[_segment_centres(idx.size, cfg.max_frames)]
    return idx


def _clips(n: int, clip_len: int, stride: int, clips: int) -> np.ndarray:
    span = (clip_len - 1) * stride + 1
    room = max(n - span, 0)  # last possible start
    if clips == 1:
        starts = np.array([room // 2], dtype=np.int64)
    else:
        k = np.arange(clips, dtype=np.int64)
        # round(k * room / (clips - 1)), half up, in integers
        starts = (2 * k * room + (clips - 1)) // (2 * (clips - 1))
    idx = starts[:, None] + np.arange(clip_len, dtype=np.int64)[None, :] * stride
    return np.minimum(idx, n - 1)
