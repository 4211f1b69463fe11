"""The encoded videos of a benchmark, kept chunk by chunk so that none of its passes holds them all.

The exact metrics score every caption against every video, twice per caption chunk (see
:func:`index.metrics.t2v_v2t_metrics`), and DLLFA's re-rank reads the candidates of each
caption batch. Encoding the videos again for each pass would cost far more than the scoring,
so each chunk is encoded once and kept: in memory while there is only one, otherwise as
``.npy`` files in a hidden temporary folder (removed on close). A pass then holds one chunk
at a time: M x d floats never exist in memory, only on disk (1M x 4096 float32: 16 GB).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable, Iterator

import numpy as np
import torch

from fusion.heads import Embedding, cat_embeddings

Chunk = dict[str, np.ndarray]


class EncodedVideos:
    """Chunks of encoded videos, rows in order: ``add`` them, then read them back a chunk at a time."""

    def __init__(self, folder: str):
        self.folder = folder  # where a temporary folder for the chunks is made when there is more than one
        self._spill: str | None = None
        self._starts: list[int] = []
        self._kept: list[Chunk | None] = []  # in memory (only while there is a single chunk), else None
        self.rows_per_chunk: list[int] = []
        self.keys: list[str] = []
        self.n = 0

    def add(self, emb: Embedding | Chunk) -> None:
        chunk = {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in emb.items()}
        rows = len(next(iter(chunk.values())))
        self.keys = self.keys or list(chunk)
        self._starts.append(self.n)
        self.rows_per_chunk.append(rows)
        self._kept.append(chunk)
        self.n += rows
        if len(self._kept) > 1:  # more than one chunk: every one goes to disk
            for i, kept in enumerate(self._kept):
                if kept is not None:
                    self._write(i, kept)
                    self._kept[i] = None

    def _write(self, i: int, chunk: Chunk) -> None:
        if self._spill is None:
            os.makedirs(self.folder, exist_ok=True)
            self._spill = tempfile.mkdtemp(prefix=".encoded-videos-", dir=self.folder)
        for key, value in chunk.items():
            np.save(os.path.join(self._spill, f"{i}.{key}.npy"), value)

    def _read(self, i: int, keys: list[str] | None = None, mmap: bool = False) -> Chunk:
        kept = self._kept[i]
        keys = keys or self.keys
        if kept is not None:
            return {k: kept[k] for k in keys}
        mode = "r" if mmap else None
        return {k: np.load(os.path.join(self._spill, f"{i}.{k}.npy"), mmap_mode=mode) for k in keys}

    def chunks(self, keys: list[str] | None = None) -> Iterator[tuple[int, Chunk]]:
        """(first row, chunk) in order, one chunk read at a time (only ``keys``, when given)."""
        for i, start in enumerate(self._starts):
            yield start, self._read(i, keys)

    def take(self, positions: np.ndarray, keys: list[str] | None = None) -> Embedding:
        """The embedding (torch, frames padded across chunks) of sorted unique row ``positions``:
        only those rows are read (of ``keys``, when given)."""
        positions = np.asarray(positions, dtype=np.int64)
        parts = []
        for i, start in enumerate(self._starts):
            stop = start + self.rows_per_chunk[i]
            lo, hi = np.searchsorted(positions, [start, stop])
            if hi > lo:
                chunk = self._read(i, keys, mmap=True)
                parts.append({k: torch.from_numpy(np.ascontiguousarray(v[positions[lo:hi] - start]))
                              for k, v in chunk.items()})
                del chunk  # unmaps the files
        return cat_embeddings(parts)

    def close(self) -> None:
        if self._spill is not None:
            shutil.rmtree(self._spill, ignore_errors=True)
            self._spill = None

    def __enter__(self) -> "EncodedVideos":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ChunkedScoreRows:
    """A row provider for :func:`index.metrics.t2v_v2t_metrics`: rows(start, stop) -> the scores of
    captions [start, stop) with every video, filled one stored video chunk at a time by
    ``score(start, stop, chunk)``."""

    def __init__(self, n_captions: int, videos: EncodedVideos, score: Callable[[int, int, Chunk], np.ndarray],
                 keys: list[str] | None = None):
        self.videos, self.score, self.keys = videos, score, keys
        self.shape = (n_captions, videos.n)

    def __call__(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, self.videos.n), np.float32)
        for first, chunk in self.videos.chunks(self.keys):
            out[:, first:first + len(next(iter(chunk.values())))] = self.score(start, stop, chunk)
        return out
