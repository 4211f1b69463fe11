"""Fixtures for shard/manifest/BigFile tests: rows, manifests, and an object-store-like filesystem."""

from __future__ import annotations

import glob
import io
import os

import numpy as np
from apache_beam.io.filesystem import CompressionTypes, FileMetadata, MatchResult
from apache_beam.io.localfilesystem import LocalFileSystem

from pipeline.manifest import Manifest, library_versions
from pipeline.shards import FeatureRow


def make_manifest(dim: int = 8, level: str = "frame", formats=("parquet", "hdf5"), **changes) -> Manifest:
    fields = dict(
        name="clip",
        kind="video",
        model="ViT-B-32",
        weights="random",
        dim=dim,
        level=level,
        sampling={"num_frames": 4, "mode": "uniform"},
        config={"model": "ViT-B-32", "pretrained": None, "num_frames": 4},
        config_hash="0123abcd",
        versions=library_versions(),
        formats=list(formats),
    )
    fields.update(changes)
    return Manifest(**fields)


def make_rows(prefix: str, n: int, dim: int = 8, frames: bool = True, seed: int = 0) -> list[FeatureRow]:
    """Rows with varying T (1..4 frames), some without frame_indices (stored as null/empty)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        t = 1 + (i % 4)
        rows.append(
            FeatureRow(
                video_id=f"{prefix}{i}",
                feature=rng.standard_normal(dim).astype(np.float32),
                frames=rng.standard_normal((t, dim)).astype(np.float32) if frames else None,
                num_frames=30 + i,
                frame_indices=None if i % 3 == 2 else np.arange(t, dtype=np.int64) * 7,
            )
        )
    return rows


class _AppendOnlyStream(io.RawIOBase):
    """Write channel like an object store upload: no seek, no read-back."""

    def __init__(self, path: str):
        self._file = open(path, "wb")

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data) -> int:
        return self._file.write(data)

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


class ObjectStoreFileSystem(LocalFileSystem):
    """``vftest://`` paths backed by a local root, with object-store semantics for writers.

    Registered with Beam's FileSystems by subclassing (BeamPlugin); set ``ROOT`` before use.
    """

    ROOT = "/nonexistent"

    @classmethod
    def scheme(cls):
        return "vftest"

    def _local(self, path: str) -> str:
        assert path.startswith("vftest://"), path
        return os.path.join(self.ROOT, path[len("vftest://") :])

    def _remote(self, local: str) -> str:
        return "vftest://" + os.path.relpath(local, self.ROOT)

    def mkdirs(self, path):
        return super().mkdirs(self._local(path))

    def has_dirs(self):
        return False

    def match(self, patterns, limits=None):
        return [
            MatchResult(
                pattern,
                [FileMetadata(self._remote(p), os.path.getsize(p)) for p in sorted(glob.glob(self._local(pattern)))],
            )
            for pattern in patterns
        ]

    def create(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        local = self._local(path)
        os.makedirs(os.path.dirname(local), exist_ok=True)
        return io.BufferedWriter(_AppendOnlyStream(local))

    def open(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        return open(self._local(path), "rb")

    def rename(self, source_file_names, destination_file_names):
        for dst in destination_file_names:
            assert not os.path.exists(self._local(dst)), f"object stores do not rename over {dst}"
        return super().rename(
            [self._local(p) for p in source_file_names], [self._local(p) for p in destination_file_names]
        )

    def exists(self, path):
        return super().exists(self._local(path))

    def delete(self, paths):
        for path in paths:
            os.remove(self._local(path))
