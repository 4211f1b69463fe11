"""LAFF / W2VV++ BigFile interchange, so features released with those papers train here unchanged.

A BigFile is a folder with ``feature.bin`` (float32, row-major, N x D, native little-endian),
``shape.txt`` (``"N D"``) and ``id.txt`` (the N ids separated by whitespace: LAFF's reader does
``read().strip().split()``, and its writers put them space-separated on one line). Ids therefore
cannot contain whitespace. Frame-level BigFiles name rows ``<videoID>_<k>`` with k the frame
number; :func:`import_bigfile` groups those per video (split at the last underscore, ordered by
k) and :func:`export_bigfile` writes them back the same way. BigFiles are local folders (they
are memory-mapped).
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from typing import Sequence

import numpy as np
from tqdm import tqdm

from pipeline.features import load_feature_set
from pipeline.manifest import Manifest, library_versions, read_manifest, write_manifest
from pipeline.shards import FeatureRow, list_shards, normalize_format, write_shard
from vidfuse.config import config_hash
from vidfuse.errors import VidfuseError

logger = logging.getLogger(__name__)

FEATURE_FILE = "feature.bin"
ID_FILE = "id.txt"
SHAPE_FILE = "shape.txt"
_DTYPE = np.dtype("<f4")
_ROWS_PER_WRITE = 65536
DEFAULT_SHARD_SIZE = 4096


class BigFileError(VidfuseError):
    """A BigFile folder is incomplete or inconsistent, or ids cannot be written to one."""


def read_bigfile(path: str) -> tuple[list[str], np.ndarray]:
    """(ids, [N, D] float32 read-only memmap) of a BigFile folder; inconsistencies name the file."""
    files = {name: os.path.join(path, name) for name in (FEATURE_FILE, ID_FILE, SHAPE_FILE)}
    missing = [name for name, p in files.items() if not os.path.isfile(p)]
    if missing:
        raise BigFileError(f"{path}: not a BigFile folder (missing {missing})")
    with open(files[SHAPE_FILE], encoding="utf-8") as handle:
        first = handle.readline().split()
    try:
        n, d = (int(x) for x in first)
    except ValueError:
        raise BigFileError(f"{files[SHAPE_FILE]}: expected 'N D', got {' '.join(first)!r}") from None
    if n < 0 or d <= 0:
        raise BigFileError(f"{files[SHAPE_FILE]}: bad shape {n} x {d}")
    with open(files[ID_FILE], encoding="utf-8", errors="replace") as handle:
        ids = handle.read().split()
    if len(ids) != n:
        raise BigFileError(f"{files[ID_FILE]}: holds {len(ids)} ids, {SHAPE_FILE} says {n}")
    size = os.path.getsize(files[FEATURE_FILE])
    if size != n * d * _DTYPE.itemsize:
        raise BigFileError(
            f"{files[FEATURE_FILE]}: {size} bytes, expected {n} x {d} float32 = {n * d * _DTYPE.itemsize} (truncated?)"
        )
    if n == 0:
        return ids, np.zeros((0, d), np.float32)
    return ids, np.memmap(files[FEATURE_FILE], dtype=_DTYPE, mode="r", shape=(n, d))


def write_bigfile(path: str, ids: Sequence[str], matrix: np.ndarray) -> None:
    """Write a BigFile folder: built in a hidden sibling folder, then renamed into place."""
    ids = [str(i) for i in ids]
    if not isinstance(matrix, np.memmap) and not hasattr(matrix, "tocsr"):  # memmap, CSR: sliced below
        matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != len(ids):
        raise BigFileError(f"write_bigfile {path}: matrix shape {matrix.shape} does not match {len(ids)} ids")
    bad = [i for i in ids if not i or any(c.isspace() for c in i)]
    if bad:
        raise BigFileError(f"write_bigfile {path}: ids cannot be empty or contain whitespace (id.txt is whitespace-separated): {bad[:5]}")
    if len(set(ids)) != len(ids):
        raise BigFileError(f"write_bigfile {path}: duplicate ids")
    path = os.path.abspath(path)
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    try:
        with open(os.path.join(tmp, FEATURE_FILE), "wb") as handle:
            for start in range(0, len(ids), _ROWS_PER_WRITE):
                block = matrix[start : start + _ROWS_PER_WRITE]
                block = block.toarray() if hasattr(block, "toarray") else block  # sparse bow: dense on disk
                np.ascontiguousarray(block, dtype=_DTYPE).tofile(handle)
        with open(os.path.join(tmp, ID_FILE), "w", encoding="utf-8") as handle:
            handle.write(" ".join(ids) + "\n")
        with open(os.path.join(tmp, SHAPE_FILE), "w", encoding="utf-8") as handle:
            handle.write(f"{matrix.shape[0]} {matrix.shape[1]}\n")
        if os.path.exists(path):
            old = os.path.join(parent, f".{name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def split_frame_id(frame_id: str) -> tuple[str, int]:
    """``"video7_12"`` -> ``("video7", 12)``; video ids may themselves contain underscores."""
    video_id, sep, k = frame_id.rpartition("_")
    if not sep or not video_id or not k.isdigit():
        raise BigFileError(f"frame id {frame_id!r} is not of the form <videoID>_<frame number>")
    return video_id, int(k)


def _group_frames(ids: Sequence[str]) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Per video (in first-appearance order): BigFile rows ordered by frame number, and those numbers."""
    rows: dict[str, list[tuple[int, int]]] = {}
    for row, frame_id in enumerate(ids):
        video_id, k = split_frame_id(frame_id)
        rows.setdefault(video_id, []).append((k, row))
    videos, row_lists, numbers = [], [], []
    for video_id, pairs in rows.items():
        pairs.sort()
        videos.append(video_id)
        numbers.append(np.asarray([k for k, _ in pairs], dtype=np.int64))
        row_lists.append(np.asarray([r for _, r in pairs], dtype=np.int64))
    return videos, row_lists, numbers


def import_bigfile(
    bigfile_dir: str,
    out_dir: str,
    name: str,
    formats: Sequence[str] = ("parquet",),
    frame_level: bool = False,
    *,
    kind: str = "video",
    shard_size: int = DEFAULT_SHARD_SIZE,
) -> Manifest:
    """Convert a BigFile folder into a vidfuse feature folder (shards + manifest.json).

    Video-level: one row per BigFile row. Frame-level: rows ``<videoID>_<k>`` become one row per
    video with ``frames`` ordered by k, ``frame_indices`` = the k values, and a mean-pooled
    ``feature``. ``num_frames`` (frames in the source video) is not recorded by BigFiles: 0.
    """
    ids, matrix = read_bigfile(bigfile_dir)
    formats = [normalize_format(f) for f in formats]
    if read_manifest(out_dir) is not None or any(list_shards(out_dir, f, formats=[f]) for f in ("parquet", "hdf5")):
        raise BigFileError(f"{out_dir}: already holds a feature set; import into an empty folder")
    if len(ids) == 0:
        raise BigFileError(f"{bigfile_dir}: the BigFile is empty")
    if len(set(ids)) != len(ids):
        raise BigFileError(f"{bigfile_dir}/{ID_FILE}: duplicate ids")
    dim = int(matrix.shape[1])
    source = os.path.abspath(bigfile_dir)
    config = {"source_format": "bigfile", "frame_level": bool(frame_level)}
    manifest = Manifest(
        name=name,
        kind=kind,
        model=f"bigfile:{os.path.basename(source.rstrip(os.sep))}",
        weights="imported",
        dim=dim,
        level="frame" if frame_level else ("sentence" if kind == "text" else "video"),
        sampling={},
        config=config,
        config_hash=config_hash(config),
        versions=library_versions(),
        formats=formats,
        extra={"imported_from": source},
    )
    manifest.validate()
    digest = manifest.hash()

    def rows_iter():
        if not frame_level:
            for start in range(0, len(ids), shard_size):
                block = np.asarray(matrix[start : start + shard_size], dtype=np.float32)
                yield [FeatureRow(video_id=i, feature=v) for i, v in zip(ids[start : start + shard_size], block)]
            return
        videos, row_lists, numbers = _group_frames(ids)
        batch: list[FeatureRow] = []
        for video_id, rows, ks in zip(videos, row_lists, numbers):
            frames = np.asarray(matrix[rows], dtype=np.float32)
            batch.append(
                FeatureRow(video_id=video_id, feature=frames.mean(axis=0), frames=frames, frame_indices=ks)
            )
            if len(batch) == shard_size:
                yield batch
                batch = []
        if batch:
            yield batch

    written: list[str] = []
    total = len(ids) if not frame_level else None
    with tqdm(total=total, desc=f"import {name}", unit="row", disable=None) as bar:
        for number, rows in enumerate(rows_iter()):
            for path in write_shard(out_dir, f"part-{number:05d}", rows, formats, digest):
                written.append(os.path.basename(path))
            bar.update(len(rows) if not frame_level else sum(len(r.frames) for r in rows))
    manifest.shards = written
    write_manifest(out_dir, manifest)
    logger.info("imported %s (%d x %d) from %s into %s", name, len(ids), dim, bigfile_dir, out_dir)
    return manifest


def export_bigfile(feature_dir: str, out_dir: str, frame_level: bool = False, fmt: str | None = None) -> None:
    """Write a feature folder as a BigFile: video vectors, or (frame_level) ``<videoID>_<k>`` rows.

    k is the stored frame number when ``frame_indices`` has one entry per frame (as after an
    import, or for frame-level extractors), else the frame's position 0..T-1.
    """
    features = load_feature_set(feature_dir, fmt)
    if not frame_level:
        write_bigfile(out_dir, features.ids, features.features)
        return
    matrix, offsets = features.frames_matrix, features.offsets
    frame_ids: list[str] = []
    for i, video_id in enumerate(features.ids):
        count = int(offsets[i + 1] - offsets[i])
        ks = features.frame_indices(video_id)
        if len(ks) != count or len(np.unique(ks)) != count:
            ks = np.arange(count)
        frame_ids.extend(f"{video_id}_{int(k)}" for k in ks)
    write_bigfile(out_dir, frame_ids, matrix)
