"""The interface every fusion head implements, so trainer, index and benchmark are head-agnostic.

An *embedding* is a dict of tensors whose first dim is the batch (videos or texts); each
head decides what it holds. :func:`cat_embeddings` / :func:`index_embeddings` work on any
of them: padding along dim 1 with zeros is neutral because per-frame tensors always travel
with a boolean mask (False = padding).
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

Embedding = dict[str, torch.Tensor]


class RetrievalHead(nn.Module):
    """Base class. Subclasses set ``video_inputs`` / ``text_inputs`` (batch keys they read)."""

    exact_index: bool = True
    video_inputs: tuple[str, ...] = ()
    text_inputs: tuple[str, ...] = ()

    def encode_video(self, batch: dict[str, torch.Tensor]) -> Embedding:
        raise NotImplementedError

    def encode_text(self, batch: dict[str, torch.Tensor]) -> Embedding:
        raise NotImplementedError

    def similarity(self, text_emb: Embedding, video_emb: Embedding) -> torch.Tensor:
        """Full score, ``[Nt, Nv]``."""
        raise NotImplementedError

    def loss(self, text_emb: Embedding, video_emb: Embedding, positives: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss; ``positives[i, j]`` is True when caption i describes video j."""
        raise NotImplementedError

    def index_embedding(self, video_emb: Embedding) -> torch.Tensor:
        """What FAISS indexes, ``[Nv, D_index]``."""
        raise NotImplementedError

    def query_embedding(self, text_emb: Embedding) -> torch.Tensor:
        """Query vector: inner product with :meth:`index_embedding` is the (stage-1) score."""
        raise NotImplementedError

    def pair_scores(self, text_emb: Embedding, video_emb: Embedding, candidates: torch.Tensor) -> torch.Tensor:
        """Full score of text i with videos ``candidates[i]`` (``[Nt, K]`` indices into video_emb).

        For re-ranking an index's top-K. Exact-index heads score by inner product.
        """
        q = self.query_embedding(text_emb)
        v = self.index_embedding(video_emb)
        return torch.einsum("id,ikd->ik", q, v[candidates])

    def attention(self, emb: Embedding, side: str = "video") -> dict[str, torch.Tensor]:
        """Fusion attention weights per feature name (heads that have them), else empty."""
        return {}

    def post_step(self) -> None:
        """Called by the trainer after each optimiser step (e.g. clamp a logit scale)."""

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay beyond norms/biases/embeddings."""
        return set()


def l2n(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return F.normalize(x, dim=dim, eps=1e-8)


def cat_embeddings(embs: Iterable[Embedding]) -> Embedding:
    """Concatenate batch-wise embeddings, zero-padding differing non-batch dims (frames)."""
    embs = list(embs)
    if not embs:
        return {}
    out = {}
    for key in embs[0]:
        parts = [e[key] for e in embs]
        shape = [max(p.shape[d] for p in parts) for d in range(1, parts[0].dim())]
        padded = []
        for p in parts:
            pad: list[int] = []
            for d in reversed(range(1, p.dim())):
                pad += [0, shape[d - 1] - p.shape[d]]
            padded.append(F.pad(p, pad) if any(pad) else p)
        out[key] = torch.cat(padded, 0)
    return out


def index_embeddings(emb: Embedding, idx: torch.Tensor | slice) -> Embedding:
    """Rows ``idx`` of every tensor of an embedding."""
    return {k: v[idx] for k, v in emb.items()}


def embedding_len(emb: Embedding) -> int:
    for v in emb.values():
        return int(v.shape[0])
    return 0


def embeddings_to(emb: Embedding, device: torch.device | str, dtype: Optional[torch.dtype] = None) -> Embedding:
    out = {}
    for k, v in emb.items():
        v = v.to(device)
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v
    return out


def shared_space_dim(section: str, frame_feature: str, text_feature: str,
                     video_dims: dict[str, int], text_dims: dict[str, int]) -> int:
    """Dim of a frame feature and a sentence feature that a head compares directly (meanP, DLLFA).

    Both must be in the data and in one space (e.g. CLIP's image and text towers); the
    error names the config key of the ``section`` at fault.
    """
    from fusion.data import FRAMES_SUFFIX
    from vidfuse.errors import ConfigError

    frames_key = frame_feature + FRAMES_SUFFIX
    if frames_key not in video_dims:
        raise ConfigError(f"{section}.frame_feature: video frames {frames_key!r} are not in the data (available: {sorted(video_dims)})")
    if text_feature not in text_dims:
        raise ConfigError(f"{section}.text_feature: text feature {text_feature!r} is not in the data (available: {sorted(text_dims)})")
    if video_dims[frames_key] != text_dims[text_feature]:
        raise ConfigError(
            f"{section}: frames {frames_key!r} (dim {video_dims[frames_key]}) and text {text_feature!r} "
            f"(dim {text_dims[text_feature]}) must share one space (e.g. CLIP's)"
        )
    return video_dims[frames_key]

