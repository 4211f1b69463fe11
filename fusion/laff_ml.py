"""LAFF and LAFF-ml heads: an h-head LAFF block on each side (DESIGN 5).

LAFF as released: 8 heads over 4096 dims (h = 1 is the plain block). LAFF-ml (multi-level
LAFF) is the same head whose video side also reads ``<name>@frames`` features: a frame-level
attention with no projection pools each into one vector, which joins the video level as a
pass-through feature; with ``batch_norm`` every projected feature gets BatchNorm1d after
tanh/dropout, on both sides. Which of the two a config is, is checked by its schema.

Similarity = mean over heads of cos(e_h(text), e_h(video)). Training sums the triplet
loss over heads (heads are not concatenated). For indexing both sides become
concat_h(e_h) / sqrt(h), so a plain inner product equals the mean-of-cosines exactly.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from fusion.config import GruConfig, LaffConfig
from fusion.heads import Embedding, RetrievalHead
from fusion.laff import LaffBlock, VideoInputs
from fusion.losses import triplet_ranking_loss
from fusion.text import TextInputs


class LaffHead(RetrievalHead):
    exact_index = True

    def __init__(self, cfg: LaffConfig, video_dims: dict[str, int], text_dims: dict[str, int],
                 vocab_size: Optional[int] = None, gru: Optional[GruConfig] = None,
                 word_embeddings: Optional[np.ndarray] = None):
        super().__init__()
        self.cfg = cfg
        self.heads = cfg.heads
        self.video_in = VideoInputs(cfg.video_features, video_dims)
        self.text_in = TextInputs(cfg.text_features, text_dims, vocab_size, gru or GruConfig(), word_embeddings)
        self.video_fuse = LaffBlock(self.video_in.dims, cfg.dim, cfg.heads, cfg.dropout, cfg.video_passthrough, "video",
                                    cfg.batch_norm)
        self.text_fuse = LaffBlock(self.text_in.dims, cfg.dim, cfg.heads, cfg.dropout, cfg.text_passthrough, "text",
                                   cfg.batch_norm)
        self.video_inputs = self.video_in.batch_keys
        self.text_inputs = self.text_in.batch_keys

    def encode_video(self, batch: dict[str, torch.Tensor]) -> Embedding:
        feats, frame_attn = self.video_in(batch)
        e, a = self.video_fuse(feats)
        emb = {"emb": e, "attn": a}
        for name, fa in frame_attn.items():
            emb[f"frame_attn:{name}"] = fa
        return emb

    def encode_text(self, batch: dict[str, torch.Tensor]) -> Embedding:
        e, a = self.text_fuse(self.text_in(batch))
        return {"emb": e, "attn": a}

    def head_similarities(self, text_emb: Embedding, video_emb: Embedding) -> torch.Tensor:
        """Per-head cosines ``[h, Nt, Nv]``."""
        return torch.einsum("ihd,jhd->hij", text_emb["emb"], video_emb["emb"])

    def similarity(self, text_emb: Embedding, video_emb: Embedding) -> torch.Tensor:
        return self.head_similarities(text_emb, video_emb).mean(0)

    def loss(self, text_emb: Embedding, video_emb: Embedding, positives: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        lc = self.cfg.loss
        per_head = [
            triplet_ranking_loss(s.float(), positives, lc.margin, lc.direction, lc.hardest)
            for s in self.head_similarities(text_emb, video_emb)
        ]
        total = torch.stack(per_head).sum()
        return total, {"triplet": float(total.detach())}

    def _flat(self, emb: Embedding) -> torch.Tensor:
        e = emb["emb"]
        return e.reshape(e.shape[0], -1) / math.sqrt(self.heads)

    def index_embedding(self, video_emb: Embedding) -> torch.Tensor:
        return self._flat(video_emb)

    def query_embedding(self, text_emb: Embedding) -> torch.Tensor:
        return self._flat(text_emb)

    def attention(self, emb: Embedding, side: str = "video") -> dict[str, torch.Tensor]:
        """Feature name -> weights ``[B, h]``; frame pools as ``"frames:<name>"`` -> ``[B, T]``."""
        names = (self.video_in if side == "video" else self.text_in).names
        out = {name: emb["attn"][:, :, i] for i, name in enumerate(names)}
        for key, val in emb.items():
            if key.startswith("frame_attn:"):
                out["frames:" + key.split(":", 1)[1]] = val
        return out
