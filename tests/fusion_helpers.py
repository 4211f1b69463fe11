"""Small random feature banks, TrainData and tiny head configs shared by the fusion tests."""

from __future__ import annotations

import numpy as np

from fusion.config import HeadConfig
from fusion.data import FeatureBank, TrainData

VIDEO_DIMS = {"clip": 32, "x3d": 24}
TEXT_DIMS = {"clip": 32, "bow": 40}
VOCAB = 30


def ragged(rng: np.random.Generator, lengths: np.ndarray, dim: int | None, high: int = 0):
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    if dim is None:
        return rng.integers(0, high, offsets[-1]).astype(np.int64), offsets
    return rng.normal(size=(offsets[-1], dim)).astype(np.float32), offsets


def random_banks(n_videos: int, n_texts: int, seed: int = 0, max_frames: int = 6):
    rng = np.random.default_rng(seed)
    videos = FeatureBank(
        vectors={k: rng.normal(size=(n_videos, d)).astype(np.float32) for k, d in VIDEO_DIMS.items()},
        frames={"clip": ragged(rng, rng.integers(1, max_frames + 1, n_videos), VIDEO_DIMS["clip"])},
    )
    texts = FeatureBank(
        vectors={"clip": rng.normal(size=(n_texts, TEXT_DIMS["clip"])).astype(np.float32),
                 "bow": rng.random((n_texts, TEXT_DIMS["bow"])).astype(np.float32)},
        tokens=ragged(rng, rng.integers(0, 8, n_texts), None, VOCAB),
    )
    return videos, texts


def learnable_data(n_videos: int = 12, captions_per_video: int = 2, seed: int = 0, val_videos: int = 0) -> TrainData:
    """Captions whose features are noisy copies of their video's (so a head can learn them)."""
    rng = np.random.default_rng(seed)
    videos, _ = random_banks(n_videos, 1, seed)
    cv = np.repeat(np.arange(n_videos), captions_per_video)
    n = len(cv)
    frames, offsets = videos.frames["clip"]
    frame_mean = np.stack([frames[offsets[i]:offsets[i + 1]].mean(0) for i in range(n_videos)])
    texts = FeatureBank(
        vectors={
            "clip": (frame_mean[cv] + 0.3 * rng.normal(size=(n, 32))).astype(np.float32),
            "bow": (np.abs(videos.vectors["x3d"][cv, :20]).repeat(2, 1) + 0.1 * rng.random((n, 40))).astype(np.float32),
        },
        tokens=(np.repeat(cv % 30, 3).astype(np.int64), np.arange(0, 3 * n + 1, 3, dtype=np.int64)),
    )
    caps = np.arange(n)
    val = caps[cv >= n_videos - val_videos] if val_videos else caps[:0]
    train = caps[cv < n_videos - val_videos] if val_videos else caps
    return TrainData(videos=videos, texts=texts, caption_video=cv, train_captions=train, val_captions=val,
                     video_ids=[f"v{i}" for i in range(n_videos)], caption_ids=[f"c{i}" for i in range(n)],
                     vocab_size=VOCAB)


def tiny_head_config(kind: str) -> HeadConfig:
    cfg = HeadConfig(type=kind)
    for section in (cfg.laff, cfg.laff_ml, cfg.concat):
        section.video_features = ["clip", "x3d", "clip@frames"]
        section.text_features = ["clip", "bow", "gru"]
        section.dim = 64
        section.dropout = 0.0
    cfg.laff_ml.heads = 2  # the 32-d pooled clip frames and text clip pass through, tiled to 2 x 32
    cfg.single.dim = 64
    cfg.single.dropout = 0.0
    cfg.gru.word_dim, cfg.gru.hidden = 8, 16
    cfg.dllfa.attn_heads, cfg.dllfa.layers, cfg.dllfa.ff_mult, cfg.dllfa.max_frames = 4, 2, 2, 16
    cfg.dllfa.dropout = 0.0
    return cfg
