"""In-memory training data contract and per-batch collation.

The ``vidfuse train`` command fills a :class:`TrainData` from feature shards; everything in
``fusion/`` works on it. Arrays may be ``np.memmap`` or h5py datasets: collation indexes
only the rows of one batch (sorted, unique, as h5py requires), so an epoch never copies
the whole set.

Batch keys (what heads read):

- ``"<name>"``: ``[B, D]`` float32 video-level / sentence-level vector
- ``"<name>@frames"``: ``[B, T, D]`` per-frame matrix, zero-padded to the longest in the batch
- ``"<name>@mask"``: ``[B, T]`` bool, True = real frame
- ``"tokens"``: ``[B, L]`` long token ids (padding value 0, never read: use the mask/lengths),
  ``"tokens@lengths"``: ``[B]`` long (>= 1; an empty caption is one padding token),
  ``"tokens@mask"``: ``[B, L]`` bool
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import numpy as np
import torch

from vidfuse.errors import VidfuseError

from fusion.keys import FRAMES_SUFFIX, LENGTHS_SUFFIX, MASK_SUFFIX, TOKENS  # noqa: F401  (re-exported)


class DataError(VidfuseError):
    """Training data that does not fit the contract (shapes, offsets, missing features)."""


@dataclass
class FeatureBank:
    """One modality side: named vectors, optional per-frame matrices, optional token ids.

    ``vectors[name]``: ``[N, D]``; ``frames[name]``: ``(matrix [sum T, D], offsets [N+1])``;
    ``tokens``: ``(ids concatenated, offsets [N+1])`` (texts only).
    """

    vectors: dict[str, Any] = field(default_factory=dict)
    frames: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    tokens: Optional[tuple[Any, Any]] = None

    def __len__(self) -> int:
        for arr in self.vectors.values():
            return int(arr.shape[0])
        for _, offsets in self.frames.values():
            return int(len(offsets) - 1)
        if self.tokens is not None:
            return int(len(self.tokens[1]) - 1)
        return 0

    def validate(self, side: str) -> None:
        """Every feature has the same number of rows and sane offsets (names the culprit)."""
        n = len(self)
        for name, arr in self.vectors.items():
            if len(arr.shape) != 2 or arr.shape[0] != n:
                raise DataError(f"{side} feature {name!r}: expected shape [{n}, D], got {list(arr.shape)}")
        for name, (matrix, offsets) in self.frames.items():
            _check_offsets(f"{side} frames {name!r}", matrix, offsets, n)
        if self.tokens is not None:
            _check_offsets(f"{side} tokens", self.tokens[0], self.tokens[1], n, ndim=1)


def _check_offsets(what: str, matrix: Any, offsets: Any, n: int, ndim: int = 2) -> None:
    offsets = np.asarray(offsets)
    if offsets.ndim != 1 or len(offsets) != n + 1:
        raise DataError(f"{what}: offsets must have {n + 1} entries, got shape {list(offsets.shape)}")
    if offsets[0] != 0 or offsets[-1] != matrix.shape[0] or np.any(np.diff(offsets) < 0):
        raise DataError(f"{what}: offsets must rise from 0 to {matrix.shape[0]} (rows of the matrix)")
    if len(matrix.shape) != ndim:
        raise DataError(f"{what}: expected a {ndim}-d array, got shape {list(matrix.shape)}")


@dataclass
class TrainData:
    """Both sides plus the caption -> video mapping and the splits (caption indices).

    ``vocab_size`` is needed when the text side uses the learned ``gru`` feature (token ids
    lie in ``[0, vocab_size)``); ``word_embeddings`` ``[vocab_size, word_dim]`` optionally
    initialises the GRU's word embeddings (e.g. word2vec rows of the vocabulary).
    """

    videos: FeatureBank
    texts: FeatureBank
    caption_video: np.ndarray
    train_captions: np.ndarray
    val_captions: np.ndarray
    video_ids: list[str]
    caption_ids: list[str]
    vocab_size: Optional[int] = None
    word_embeddings: Optional[np.ndarray] = None

    def validate(self) -> None:
        self.videos.validate("video")
        self.texts.validate("text")
        nv, nt = len(self.videos), len(self.texts)
        if len(self.video_ids) != nv:
            raise DataError(f"{len(self.video_ids)} video ids for {nv} video rows")
        if len(self.caption_ids) != nt or len(self.caption_video) != nt:
            raise DataError(
                f"{nt} caption rows but {len(self.caption_ids)} caption ids and "
                f"{len(self.caption_video)} caption->video entries"
            )
        cv = np.asarray(self.caption_video)
        if nt and (cv.min() < 0 or cv.max() >= nv):
            raise DataError(f"caption_video refers to videos outside [0, {nv})")
        for split in ("train_captions", "val_captions"):
            idx = np.asarray(getattr(self, split))
            if idx.size and (idx.min() < 0 or idx.max() >= nt):
                raise DataError(f"{split} refers to captions outside [0, {nt})")
        if len(self.train_captions) == 0:
            raise DataError("no training captions")
        if self.texts.tokens is not None and self.vocab_size is not None:
            ids = np.asarray(self.texts.tokens[0])
            if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
                raise DataError(f"token ids must lie in [0, vocab_size={self.vocab_size})")


def feature_dims(bank: FeatureBank) -> dict[str, int]:
    """Feature name -> dim, frame matrices as ``"<name>@frames"`` (what ``build_head`` takes)."""
    dims = {name: int(arr.shape[1]) for name, arr in bank.vectors.items()}
    dims.update({name + FRAMES_SUFFIX: int(m.shape[1]) for name, (m, _) in bank.frames.items()})
    return dims


def take_rows(arr: Any, idx: np.ndarray) -> np.ndarray:
    """``arr[idx]`` for numpy, memmap, h5py (needs increasing unique indices) or scipy sparse."""
    idx = np.asarray(idx, dtype=np.int64)
    if isinstance(arr, np.ndarray):
        rows = arr[idx]
    else:
        uniq, inverse = np.unique(idx, return_inverse=True)
        rows = arr[uniq]
        rows = rows.toarray() if hasattr(rows, "toarray") else np.asarray(rows)
        rows = rows[inverse]
    return np.asarray(rows, dtype=np.float32) if rows.dtype != np.float32 else rows


def _ragged(matrix: Any, offsets: Any, idx: np.ndarray) -> list[np.ndarray]:
    offsets = np.asarray(offsets)
    out = []
    for i in idx:
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        out.append(np.asarray(matrix[lo:hi]))
    return out


def _pad(seqs: list[np.ndarray], dtype: torch.dtype, min_len: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    length = max([len(s) for s in seqs] + [min_len])
    tail = seqs[0].shape[1:] if seqs else ()
    out = torch.zeros((len(seqs), length, *tail), dtype=dtype)
    mask = torch.zeros((len(seqs), length), dtype=torch.bool)
    for b, s in enumerate(seqs):
        if len(s):
            out[b, : len(s)] = torch.as_tensor(np.asarray(s)).to(dtype)
            mask[b, : len(s)] = True
    return out, mask


def _wanted(names: Optional[Iterable[str]], key: str) -> bool:
    return names is None or key in names


def _collate_features(bank: FeatureBank, idx: np.ndarray, names: Optional[set[str]], side: str) -> dict[str, torch.Tensor]:
    """Vectors and padded frame matrices (with masks) of rows ``idx``: what both sides share."""
    batch: dict[str, torch.Tensor] = {}
    for name, arr in bank.vectors.items():
        if _wanted(names, name):
            batch[name] = torch.from_numpy(np.ascontiguousarray(take_rows(arr, idx)))
    for name, (matrix, offsets) in bank.frames.items():
        if _wanted(names, name + FRAMES_SUFFIX) or _wanted(names, name + MASK_SUFFIX):
            seqs = _ragged(matrix, offsets, idx)
            empty = [int(i) for i, s in zip(idx, seqs) if len(s) == 0]
            if empty:
                raise DataError(f"{side} row {empty[0]} has no frames for feature {name!r}")
            batch[name + FRAMES_SUFFIX], batch[name + MASK_SUFFIX] = _pad(seqs, torch.float32)
    return batch


def collate_videos(bank: FeatureBank, idx: np.ndarray, names: Optional[Iterable[str]] = None) -> dict[str, torch.Tensor]:
    """Rows ``idx`` of a video bank as tensors; ``names`` limits to the keys a head reads."""
    names = set(names) if names is not None else None
    batch = _collate_features(bank, np.asarray(idx, dtype=np.int64), names, "video")
    if names is not None:
        _check_present(names, batch, "video")
    return batch


def collate_texts(bank: FeatureBank, idx: np.ndarray, names: Optional[Iterable[str]] = None) -> dict[str, torch.Tensor]:
    """Rows ``idx`` of a text bank: vectors, and padded token ids with lengths and mask."""
    names = set(names) if names is not None else None
    idx = np.asarray(idx, dtype=np.int64)
    batch = _collate_features(bank, idx, names, "text")
    if bank.tokens is not None and _wanted(names, TOKENS):
        seqs = _ragged(bank.tokens[0], bank.tokens[1], idx)
        ids, mask = _pad(seqs, torch.long)
        lengths = mask.sum(1)
        mask[:, 0] |= lengths == 0  # an empty caption reads as one padding token
        batch[TOKENS] = ids
        batch[TOKENS + MASK_SUFFIX] = mask
        batch[TOKENS + LENGTHS_SUFFIX] = lengths.clamp(min=1)
    if names is not None:
        _check_present(names, batch, "text")
    return batch


def _check_present(names: set[str], batch: dict, side: str) -> None:
    missing = sorted(n for n in names if n not in batch)
    if missing:
        raise DataError(f"{side} batch lacks {missing} (the data has {sorted(batch) or 'nothing'} of those)")


def batch_to(batch: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    """Move a collated batch to ``device`` (non-blocking when pinned)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
