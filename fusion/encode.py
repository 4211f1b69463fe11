"""Batch-wise encoding of feature banks with a trained head, and full-score similarities.

Used by validation, ``vidfuse index`` (video index embeddings), ``vidfuse benchmark`` /
``search`` (query embeddings, and the full score for re-ranking a DLLFA index's top-K).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from fusion.data import FeatureBank, batch_to, collate_texts, collate_videos
from fusion.heads import Embedding, RetrievalHead, cat_embeddings, index_embeddings


def _device(head: RetrievalHead, device: Optional[torch.device | str]) -> torch.device:
    if device is not None:
        return torch.device(device)
    for p in head.parameters():
        return p.device
    return torch.device("cpu")


def _batches(head: RetrievalHead, bank: FeatureBank, side: str, idx: Optional[np.ndarray], batch_size: int,
             device: Optional[torch.device | str]):
    """Yields the head's embedding of consecutive row batches (head in eval mode meanwhile)."""
    if side not in ("video", "text"):
        raise ValueError(f"side must be 'video' or 'text', not {side!r}")
    dev = _device(head, device)
    idx = np.arange(len(bank)) if idx is None else np.asarray(idx, dtype=np.int64)
    collate, keys = (collate_videos, head.video_inputs) if side == "video" else (collate_texts, head.text_inputs)
    encode = head.encode_video if side == "video" else head.encode_text
    was_training = head.training
    head.eval()
    try:
        with torch.no_grad():
            for s in range(0, len(idx), batch_size):
                yield encode(batch_to(collate(bank, idx[s : s + batch_size], keys), dev))
    finally:
        head.train(was_training)


def encode_bank(head: RetrievalHead, bank: FeatureBank, side: str, idx: Optional[np.ndarray] = None,
                batch_size: int = 256, device: Optional[torch.device | str] = None) -> Embedding:
    """The head's structured embedding of rows ``idx`` (all rows by default) of one side."""
    return cat_embeddings(_batches(head, bank, side, idx, batch_size, device))


def encode_videos(head: RetrievalHead, bank: FeatureBank, batch_size: int = 256, idx: Optional[np.ndarray] = None,
                  device: Optional[torch.device | str] = None) -> np.ndarray:
    """Index embeddings ``[N, D_index]`` float32 (what FAISS stores); batch by batch, so a
    head's larger per-video state (DLLFA's frame keys/values) never exists for all videos."""
    parts = [_np(head.index_embedding(e)) for e in _batches(head, bank, "video", idx, batch_size, device)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def encode_texts(head: RetrievalHead, bank: FeatureBank, batch_size: int = 256, idx: Optional[np.ndarray] = None,
                 device: Optional[torch.device | str] = None) -> np.ndarray:
    """Query embeddings ``[N, D_index]`` float32 (inner product = stage-1 score)."""
    parts = [_np(head.query_embedding(e)) for e in _batches(head, bank, "text", idx, batch_size, device)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


@torch.no_grad()
def embedding_similarity(head: RetrievalHead, text_emb: Embedding, video_emb: Embedding, chunk: int = 256) -> np.ndarray:
    """Full score ``[Nt, Nv]`` float32 from encoded sides, text rows in chunks."""
    was_training = head.training
    head.eval()
    try:
        n = next(iter(text_emb.values())).shape[0] if text_emb else 0
        nv = next(iter(video_emb.values())).shape[0] if video_emb else 0
        out = np.empty((n, nv), np.float32)
        for s in range(0, n, chunk):
            out[s : s + chunk] = _np(head.similarity(index_embeddings(text_emb, slice(s, s + chunk)), video_emb))
    finally:
        head.train(was_training)
    return out


def similarity_matrix(head: RetrievalHead, text_bank: FeatureBank, video_bank: FeatureBank,
                      text_idx: Optional[np.ndarray] = None, video_idx: Optional[np.ndarray] = None,
                      batch_size: int = 256, device: Optional[torch.device | str] = None) -> np.ndarray:
    """Full score (DLLFA: s with s_rel) of texts x videos, ``[Nt, Nv]`` float32."""
    video_emb = encode_bank(head, video_bank, "video", video_idx, batch_size, device)
    text_emb = encode_bank(head, text_bank, "text", text_idx, batch_size, device)
    return embedding_similarity(head, text_emb, video_emb, batch_size)


def rerank_scores(head: RetrievalHead, text_bank: FeatureBank, video_bank: FeatureBank, candidates: np.ndarray,
                  text_idx: Optional[np.ndarray] = None, batch_size: int = 256,
                  device: Optional[torch.device | str] = None) -> np.ndarray:
    """Full score of each text with its own candidates: ``candidates [Nt, K]`` rows of ``video_bank``.

    Stage 2 of DLLFA retrieval (FAISS top-K on v_g, then re-rank by s). Only the candidate
    videos of one text chunk are encoded at a time.
    """
    text_idx = np.arange(len(text_bank)) if text_idx is None else np.asarray(text_idx, dtype=np.int64)
    return rerank_encoded(
        head, len(text_idx), lambda s, e: encode_bank(head, text_bank, "text", text_idx[s:e], batch_size, device),
        lambda rows: encode_bank(head, video_bank, "video", rows, batch_size, device), candidates, batch_size,
        device)


@torch.no_grad()
def rerank_encoded(head: RetrievalHead, n_texts: int, text_rows: Callable[[int, int], Embedding],
                   video_rows: Callable[[np.ndarray], Embedding], candidates: np.ndarray, batch_size: int = 256,
                   device: Optional[torch.device | str] = None) -> np.ndarray:
    """:func:`rerank_scores` from embeddings however they are kept: ``text_rows(start, stop)``
    gives texts [start, stop), ``video_rows(sorted unique positions)`` those videos (the
    benchmark reads them from its chunked store of encoded videos instead of encoding again)."""
    candidates = np.asarray(candidates, dtype=np.int64)
    if candidates.ndim != 2 or candidates.shape[0] != n_texts:
        raise ValueError(f"candidates must be [{n_texts}, K], got shape {list(candidates.shape)}")
    out = np.empty(candidates.shape, np.float32)
    was_training = head.training
    head.eval()
    try:
        for s in range(0, n_texts, batch_size):
            cand = candidates[s : s + batch_size]
            uniq, local = np.unique(cand, return_inverse=True)
            video_emb = video_rows(uniq)
            text_emb = text_rows(s, min(n_texts, s + batch_size))
            dev = _device(head, device)
            local_t = torch.from_numpy(local.reshape(cand.shape)).to(dev)
            out[s : s + batch_size] = _np(head.pair_scores(text_emb, video_emb, local_t))
    finally:
        head.train(was_training)
    return out
