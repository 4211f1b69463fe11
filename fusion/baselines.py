"""Baseline heads for the comparison tables (DESIGN 5).

- :class:`MeanPHead`: CLIP4Clip meanP on frozen features: l2n(masked mean of frames) vs the
  CLIP sentence embedding. No parameters: "training" only validates.
- :class:`ConcatHead`: W2VV++-style: each feature projected (x_i = tanh(W_i f_i + b_i)),
  concatenated, Linear -> l2n, per side; triplet loss as LAFF.
- :class:`SingleFeatureHead`: one feature per side, projected like LAFF, or raw (cosine of
  the vectors themselves; parameter-free).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from fusion.config import ConcatConfig, GruConfig, MeanPConfig, SingleConfig
from fusion.data import FRAMES_SUFFIX, MASK_SUFFIX
from fusion.heads import Embedding, RetrievalHead, l2n, shared_space_dim
from fusion.laff import FeatureProjector, VideoInputs, xavier_
from fusion.losses import info_nce, triplet_ranking_loss
from fusion.text import TextInputs
from vidfuse.errors import ConfigError


class _CosineHead(RetrievalHead):
    """Heads whose embedding is one unit vector ``"emb"`` per item: score = inner product."""

    exact_index = True

    def similarity(self, text_emb: Embedding, video_emb: Embedding) -> torch.Tensor:
        return text_emb["emb"] @ video_emb["emb"].t()

    def index_embedding(self, video_emb: Embedding) -> torch.Tensor:
        return video_emb["emb"]

    def query_embedding(self, text_emb: Embedding) -> torch.Tensor:
        return text_emb["emb"]


class MeanPHead(_CosineHead):
    def __init__(self, cfg: MeanPConfig, video_dims: dict[str, int], text_dims: dict[str, int]):
        super().__init__()
        self.cfg = cfg
        shared_space_dim("meanp", cfg.frame_feature, cfg.text_feature, video_dims, text_dims)
        frames_key = cfg.frame_feature + FRAMES_SUFFIX
        self.frames_key, self.mask_key = frames_key, cfg.frame_feature + MASK_SUFFIX
        self.video_inputs = (self.frames_key, self.mask_key)
        self.text_inputs = (cfg.text_feature,)

    def encode_video(self, batch: dict[str, torch.Tensor]) -> Embedding:
        frames, mask = batch[self.frames_key], batch[self.mask_key]
        m = mask[..., None].to(frames.dtype)
        return {"emb": l2n((frames * m).sum(1) / m.sum(1).clamp(min=1))}

    def encode_text(self, batch: dict[str, torch.Tensor]) -> Embedding:
        return {"emb": l2n(batch[self.cfg.text_feature])}

    def loss(self, text_emb: Embedding, video_emb: Embedding, positives: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        loss = info_nce(self.cfg.temperature_scale * self.similarity(text_emb, video_emb).float(), positives)
        return loss, {"nce": float(loss.detach())}


class _TripletMixin:
    cfg: ConcatConfig | SingleConfig

    def loss(self, text_emb: Embedding, video_emb: Embedding, positives: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        lc = self.cfg.loss
        loss = triplet_ranking_loss(self.similarity(text_emb, video_emb).float(), positives, lc.margin, lc.direction, lc.hardest)
        return loss, {"triplet": float(loss.detach())}


class ConcatHead(_TripletMixin, _CosineHead):
    def __init__(self, cfg: ConcatConfig, video_dims: dict[str, int], text_dims: dict[str, int],
                 vocab_size: Optional[int] = None, gru: Optional[GruConfig] = None,
                 word_embeddings: Optional[np.ndarray] = None):
        super().__init__()
        self.cfg = cfg
        self.video_in = VideoInputs(cfg.video_features, video_dims)
        self.text_in = TextInputs(cfg.text_features, text_dims, vocab_size, gru or GruConfig(), word_embeddings)
        self.video_proj = FeatureProjector(self.video_in.dims, cfg.dim, 1, cfg.dropout, (), "video")
        self.text_proj = FeatureProjector(self.text_in.dims, cfg.dim, 1, cfg.dropout, (), "text")
        self.video_out = xavier_(nn.Linear(cfg.dim * len(self.video_in.dims), cfg.dim))
        self.text_out = xavier_(nn.Linear(cfg.dim * len(self.text_in.dims), cfg.dim))
        self.video_inputs = self.video_in.batch_keys
        self.text_inputs = self.text_in.batch_keys

    def encode_video(self, batch: dict[str, torch.Tensor]) -> Embedding:
        x = self.video_proj(self.video_in(batch)[0])
        return {"emb": l2n(self.video_out(x.flatten(1)))}

    def encode_text(self, batch: dict[str, torch.Tensor]) -> Embedding:
        x = self.text_proj(self.text_in(batch))
        return {"emb": l2n(self.text_out(x.flatten(1)))}


class SingleFeatureHead(_TripletMixin, _CosineHead):
    def __init__(self, cfg: SingleConfig, video_dims: dict[str, int], text_dims: dict[str, int],
                 vocab_size: Optional[int] = None, gru: Optional[GruConfig] = None,
                 word_embeddings: Optional[np.ndarray] = None):
        super().__init__()
        self.cfg = cfg
        self.video_in = VideoInputs([cfg.video_feature], video_dims)
        self.text_in = TextInputs([cfg.text_feature], text_dims, vocab_size, gru or GruConfig(), word_embeddings)
        dv, dt = self.video_in.dims[cfg.video_feature], self.text_in.dims[cfg.text_feature]
        if cfg.project:
            self.video_proj = FeatureProjector(self.video_in.dims, cfg.dim, 1, cfg.dropout, (), "video")
            self.text_proj = FeatureProjector(self.text_in.dims, cfg.dim, 1, cfg.dropout, (), "text")
        elif dv != dt:
            raise ConfigError(
                f"single.project=false compares raw vectors, but video {cfg.video_feature!r} has dim {dv} "
                f"and text {cfg.text_feature!r} has dim {dt}"
            )
        self.video_inputs = self.video_in.batch_keys
        self.text_inputs = self.text_in.batch_keys

    def encode_video(self, batch: dict[str, torch.Tensor]) -> Embedding:
        feats = self.video_in(batch)[0]
        x = self.video_proj(feats)[:, 0] if self.cfg.project else feats[self.cfg.video_feature]
        return {"emb": l2n(x)}

    def encode_text(self, batch: dict[str, torch.Tensor]) -> Embedding:
        feats = self.text_in(batch)
        x = self.text_proj(feats)[:, 0] if self.cfg.project else feats[self.cfg.text_feature]
        return {"emb": l2n(x)}
