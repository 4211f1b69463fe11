"""Read a feature folder (Parquet or HDF5 shards + manifest.json) as one checked, read-only set.

Loading validates everything a trainer would otherwise trip over much later: the manifest
exists and names the feature set asked for, every shard carries that manifest's hash and dim,
its copy in the other format agrees with it, ids are unique across shards, and no row that is
used holds NaN/inf. Video-level vectors are read eagerly into one preallocated [N, D] array (no
second copy), or, for sparse shards (bow counts), into one ``scipy.sparse.csr_matrix``; frame
matrices, which are T times larger, are read on first use.

NaN/inf rows are refused, never skipped: a stage that silently drops a video trains or indexes
on other data than the user named (a benchmark over fewer test videos is not comparable). The
check covers the rows a caller uses (``ids``), so a bad video outside the split at hand does not
stop the stages that never read it; the message names each video, its shard and row, and the
two ways out (re-extract it, or leave it out of the split files).
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np
from pipeline.fs import FileSystems

from pipeline.manifest import MANIFEST_NAME, Manifest, read_manifest
from pipeline.shards import (
    FORMAT_EXTENSIONS,
    FeatureSetError,
    ShardError,
    ShardReader,
    check_header,
    check_twins,
    duplicate_ids_error,
    list_shards,
    normalize_format,
    open_shard,
    shard_path,
    shard_stem,
)

logger = logging.getLogger(__name__)

__all__ = ["FeatureSet", "FeatureSetError", "ShardError", "MissingIdError", "load_feature_set", "read_feature_manifest"]

_SHOW = 5
SOURCES_FILE = "sources.json"  # video folders extracted into a features folder (search shows their paths)


class MissingIdError(FeatureSetError, KeyError):
    """An id was asked of a feature set that does not hold it (a KeyError, and a VidfuseError)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def _examples(items: Sequence[str], total: int | None = None) -> str:
    total = len(items) if total is None else total
    shown = ", ".join(repr(i) for i in list(items)[:_SHOW])
    return f"{shown}{', ...' if total > _SHOW else ''} ({total} in all)"


def _nonfinite_rows(matrix: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Row numbers holding NaN/inf, checked in chunks so no [N, D] boolean temp is made."""
    if hasattr(matrix, "indptr"):  # CSR (bow counts): only the stored values can be NaN/inf
        bad = np.flatnonzero(~np.isfinite(matrix.data))
        return np.unique(np.searchsorted(matrix.indptr, bad, side="right") - 1)
    bad = [np.flatnonzero(~np.isfinite(matrix[i : i + chunk]).all(axis=1)) + i for i in range(0, len(matrix), chunk)]
    return np.concatenate(bad) if bad else np.zeros(0, np.int64)


class FeatureSet:
    """Read-only view of one feature folder: ids in shard order, vectors, and (lazily) frames."""

    def __init__(
        self,
        *,
        path: str,
        fmt: str,
        manifest: Manifest,
        ids: list[str],
        features: np.ndarray,
        num_frames: np.ndarray,
        frame_index_values: np.ndarray,
        frame_index_offsets: np.ndarray,
        has_frames: bool,
        frames_loader: Callable[[], tuple[np.ndarray, np.ndarray]] | None,
        shards: Sequence[str] = (),
        rows: np.ndarray | None = None,
        shard_starts: np.ndarray | None = None,
    ):
        self.path = path
        self.fmt = fmt
        self.manifest = manifest
        self.ids = ids
        self.dim = int(manifest.dim)
        self.features = features
        self.num_frames = num_frames
        self._index_values = frame_index_values
        self._index_offsets = frame_index_offsets
        self.has_frames = has_frames
        self._frames_loader = frames_loader
        self._frames: tuple[np.ndarray, np.ndarray] | None = None  # checked
        self._raw: tuple[np.ndarray, np.ndarray] | None = None  # as read
        self.shards = list(shards)
        self._position = {video_id: i for i, video_id in enumerate(ids)}
        # where each row came from (for messages): row number in the folder, first row of each shard
        self._rows = np.arange(len(ids), dtype=np.int64) if rows is None else rows
        self._shard_starts = np.zeros(1, np.int64) if shard_starts is None else shard_starts

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, video_id: object) -> bool:
        return video_id in self._position

    def __repr__(self) -> str:
        return (
            f"FeatureSet({self.manifest.name!r}, {len(self)} x {self.dim}, level={self.manifest.level}, "
            f"frames={self.has_frames}, {self.fmt}, {self.path})"
        )

    @property
    def name(self) -> str:
        return self.manifest.name

    def index_of(self, video_id: str) -> int:
        try:
            return self._position[video_id]
        except KeyError:
            raise MissingIdError(
                f"id {video_id!r} is not in feature set {self.manifest.name!r} at {self.path} ({len(self)} ids)"
            ) from None

    def get(self, video_id: str) -> np.ndarray:
        """[D] video-level vector (dense, also for a sparse set)."""
        row = self.features[self.index_of(video_id)]
        return row.toarray()[0] if hasattr(row, "toarray") else row

    def where(self, i: int) -> str:
        """``<shard file> row <r>``: where row ``i`` of this set is stored."""
        row = int(self._rows[i])
        shard = int(np.searchsorted(self._shard_starts, row, side="right")) - 1
        name = FileSystems.split(self.shards[shard])[1] if self.shards else "?"
        return f"{name} row {row - int(self._shard_starts[shard])}"

    def _refuse_nonfinite(self, bad: np.ndarray, what: str) -> None:
        if not bad.size:
            return
        text = self.manifest.kind == "text"
        more = ", ..." if bad.size > _SHOW else ""
        ids = ", ".join(repr(self.ids[int(i)]) for i in bad[:_SHOW]) + more
        places = ", ".join(self.where(int(i)) for i in bad[:_SHOW]) + more
        raise ShardError(
            f"{self.path}: {bad.size} row(s) hold NaN/inf values in their {what}, ids {ids} ({places}); "
            f"re-extract those {'captions' if text else 'videos'} (delete their shards, every format, and rerun "
            f"`vidfuse {'extract-text' if text else 'extract'}` into this folder)"
            + ("" if text else " or leave those videos out of the split files")
        )

    def check_finite(self) -> None:
        """Refuse NaN/inf video-level vectors (frames are checked when first read)."""
        self._refuse_nonfinite(_nonfinite_rows(self.features), "feature vector")

    def _raw_frames(self) -> tuple[np.ndarray, np.ndarray]:
        if self._frames is not None:
            return self._frames
        if self._raw is None:
            self._raw = self._frames_loader()
        return self._raw

    def _require_frames(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.has_frames:
            raise FeatureSetError(
                f"feature set {self.manifest.name!r} at {self.path} has no frame-level features "
                f"(level {self.manifest.level!r}; its extractor kept only video-level vectors)"
            )
        if self._frames is None:
            matrix, offsets = self._raw_frames()
            bad_rows = _nonfinite_rows(matrix)
            if bad_rows.size:
                owners = np.unique(np.searchsorted(offsets, bad_rows, side="right") - 1)
                self._refuse_nonfinite(owners, "frame matrix")
            self._frames, self._raw = (matrix, offsets), None
        return self._frames

    @property
    def frames_matrix(self) -> np.ndarray:
        """[sum T, D] frame/clip vectors of all videos, in ``ids`` order."""
        return self._require_frames()[0]

    @property
    def offsets(self) -> np.ndarray:
        """[N+1] int64: video i's frames are ``frames_matrix[offsets[i]:offsets[i+1]]``."""
        return self._require_frames()[1]

    def frames(self, video_id: str) -> np.ndarray:
        """[T, D] frame/clip vectors of one video."""
        i = self.index_of(video_id)
        matrix, offsets = self._require_frames()
        return matrix[offsets[i] : offsets[i + 1]]

    def frame_indices(self, video_id: str) -> np.ndarray:
        """Sampled source-frame indices of one video (flattened for clip windows; empty if unknown)."""
        i = self.index_of(video_id)
        return self._index_values[self._index_offsets[i] : self._index_offsets[i + 1]]

    def subset(self, ids: Sequence[str]) -> "FeatureSet":
        """A FeatureSet of ``ids`` in that order; ids it lacks are one error naming a few of them."""
        ids = list(ids)
        missing = [i for i in ids if i not in self._position]
        if missing:
            raise MissingIdError(
                f"{len(missing)} of {len(ids)} requested id(s) are not in feature set "
                f"{self.manifest.name!r} at {self.path}: {_examples(missing)}"
            )
        rows = np.fromiter((self._position[i] for i in ids), dtype=np.int64, count=len(ids))
        values, offsets = _gather(self._index_values, self._index_offsets, rows)

        def frames_loader() -> tuple[np.ndarray, np.ndarray]:
            return _gather(*self._raw_frames(), rows)  # checked by the subset: its rows only

        return FeatureSet(
            path=self.path,
            fmt=self.fmt,
            manifest=self.manifest,
            ids=ids,
            features=self.features[rows],
            num_frames=self.num_frames[rows],
            frame_index_values=values,
            frame_index_offsets=offsets,
            has_frames=self.has_frames,
            frames_loader=frames_loader if self.has_frames else None,
            shards=self.shards,
            rows=self._rows[rows],
            shard_starts=self._shard_starts,
        )


def _gather(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ragged rows ``rows`` of (values, offsets), as a new (values, offsets)."""
    lengths = offsets[rows + 1] - offsets[rows]
    new_offsets = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    if len(rows) == 0:
        return values[:0], new_offsets
    take = np.concatenate([np.arange(offsets[r], offsets[r + 1]) for r in rows])
    return values[take], new_offsets


def _open_checked(path: str, manifest: Manifest) -> ShardReader:
    shard = open_shard(path)
    try:
        check_header(shard, manifest)
    except BaseException:
        shard.close()
        raise
    return shard


def _twin_paths(path: str, fmt: str, manifest: Manifest) -> list[str]:
    """The same shard in the manifest's other formats (present: ``list_shards`` lists complete shards only)."""
    required = list(dict.fromkeys(normalize_format(f) for f in manifest.formats))
    if fmt not in required:
        return []
    prefix = path[: len(path) - len(FileSystems.split(path)[1])]  # the folder, as the path spells it
    return [_twin_on_disk(prefix, shard_stem(path), f) for f in required if f != fmt]


def _twin_on_disk(prefix: str, stem: str, fmt: str) -> str:
    """A shard's file in ``fmt``: its current name, or the older one (HDF5 twins without '_')."""
    path = prefix + FileSystems.split(shard_path("", stem, fmt))[1]
    older = prefix + stem + FORMAT_EXTENSIONS[fmt]
    return path if FileSystems.exists(path) or not FileSystems.exists(older) else older


def _pick_format(path: str, fmt: str | None) -> tuple[str, list[str]]:
    if fmt is not None:
        fmt = normalize_format(fmt)
        shards = list_shards(path, fmt)
        if not shards:
            others = [f for f in FORMAT_EXTENSIONS if f != fmt and list_shards(path, f)]
            hint = f"; it has {others[0]} shards (pass that format)" if others else ""
            raise FeatureSetError(f"{path}: no complete {fmt} shards (*{FORMAT_EXTENSIONS[fmt]}){hint}")
        return fmt, shards
    for candidate in ("parquet", "hdf5"):
        shards = list_shards(path, candidate)
        if shards:
            return candidate, shards
    raise FeatureSetError(
        f"{path}: no complete shards (*.parquet or *.h5): the extraction wrote none yet, or was killed before any finished"
    )


def _shard_file_exists(folder: str, stem: str, fmt: str) -> bool:
    """Whether shard ``stem`` has its ``fmt`` file, under today's name or an older folder's."""
    fmt = normalize_format(fmt)
    return any(FileSystems.exists(p) for p in (shard_path(folder, stem, fmt),
                                              FileSystems.join(folder, stem + FORMAT_EXTENSIONS[fmt])))


def _listed_but_missing(listed: Sequence[str], paths: Sequence[str], fmt: str, folder: str,
                        formats: Sequence[str]) -> list[str]:
    """Files of shards the manifest names that are not complete on disk.

    Entries are basenames (``part-0.parquet``: that format only) or stems (``part-0``: every
    format of ``formats``); for a stem, the files named are the formats it lacks (a deleted
    ``.h5`` twin is named, not the ``.parquet`` that is there).
    """
    ext = FORMAT_EXTENSIONS[fmt]
    stems = {shard_stem(p) for p in paths}
    missing = []
    for entry in listed:
        if entry.endswith(tuple(FORMAT_EXTENSIONS.values())):
            if entry.endswith(ext) and shard_stem(entry) not in stems:
                missing.append(entry)
            continue  # that format's file (or another format's)
        if entry in stems:
            continue
        lacking = [FileSystems.split(shard_path(folder, entry, f))[1]
                   for f in (formats or [fmt]) if not _shard_file_exists(folder, entry, f)]
        missing.extend(lacking or [FileSystems.split(shard_path("", entry, fmt))[1]])
    return missing


def _stem(path: str) -> str:
    """``part-0`` of a shard file or of a manifest entry (manifests list stems or file names)."""
    return shard_stem(path)


def read_feature_manifest(path: str, name: str | None = None) -> Manifest:
    """A feature folder's manifest; refused when absent, or (``name`` given) naming another feature set."""
    manifest = read_manifest(path)
    if manifest is None:
        if not FileSystems.exists(path):
            raise FeatureSetError(f"feature folder {path} does not exist")
        raise FeatureSetError(
            f"{path}: no {MANIFEST_NAME}; not a vidfuse feature folder, or its extraction never finished"
        )
    if name is not None and manifest.name != name:
        raise FeatureSetError(
            f"{path}: {MANIFEST_NAME} describes feature set {manifest.name!r}, not {name!r} "
            "(a folder copied or renamed from another feature set?)"
        )
    return manifest


def load_feature_set(
    path: str, fmt: str | None = None, ids: Sequence[str] | None = None, name: str | None = None
) -> FeatureSet:
    """Load and check a feature folder; ``fmt`` None reads Parquet if present, else HDF5.

    ``ids``: return just those rows, in that order (missing ids are a MissingIdError), and check
    only them for NaN/inf. ``name``: the feature set the caller expects (``"x3d"``,
    ``"text/clip"``); a folder whose manifest names another is refused.
    """
    path = path.rstrip("/") if len(path) > 1 else path
    manifest = read_feature_manifest(path, name)
    try:
        fmt, paths = _pick_format(path, fmt)
    except FeatureSetError:  # no complete shard: say which listed file went missing, if one did
        picked = normalize_format(fmt or (manifest.formats or ["parquet"])[0])
        if not _listed_but_missing(manifest.shards, [], picked, path, manifest.formats):
            raise
        fmt, paths = picked, []
    listed_missing = _listed_but_missing(manifest.shards, paths, fmt, path, manifest.formats)
    if listed_missing:
        raise FeatureSetError(
            f"{path}: {MANIFEST_NAME} lists shard(s) missing from the folder: {_examples(listed_missing)}; "
            "deleted or lost? rerun the extraction into this folder to re-extract their rows"
        )
    listed = {_stem(entry) for entry in manifest.shards}
    unlisted = [FileSystems.split(p)[1] for p in paths if _stem(p) not in listed]
    if unlisted:  # an extraction killed before its last manifest update; the rows carry its hash
        logger.warning("%s: reading %d shard(s) manifest.json does not list yet: %s; an extraction into it is "
                       "running or was killed, so the set may be incomplete (rerun `vidfuse extract` to finish it)",
                       path, len(unlisted), _examples(unlisted))
    dim = manifest.dim

    # Pass 1: headers (hash, dims, row counts), ids, and agreement with the other format's copy.
    readers = []
    try:
        shard_ids: list[list[str]] = []
        for p in paths:
            readers.append(_open_checked(p, manifest))
            shard_ids.append(readers[-1].ids())
            check_twins(readers[-1], _twin_paths(p, fmt, manifest), shard_ids[-1])
        with_frames = [r.has_frames for r in readers]
        if any(with_frames) and not all(with_frames):
            lacking = [r.path for r in readers if not r.has_frames]
            raise ShardError(f"{path}: some shards have frame matrices and others do not, e.g. without: {lacking[:3]}")
        has_frames = bool(with_frames) and all(with_frames)
        sparse = [r.sparse for r in readers]
        if any(sparse) and not all(sparse):
            lacking = [r.path for r in readers if not r.sparse]
            raise ShardError(f"{path}: some shards hold sparse vectors and others dense ones, e.g. dense: {lacking[:3]}")
        owner: dict[str, str] = {}
        duplicates: list[str] = []
        for k, reader in enumerate(readers):
            for video_id in shard_ids[k]:
                if video_id in owner:
                    duplicates.append(f"{video_id!r} ({FileSystems.split(owner[video_id])[1]} and "
                                      f"{FileSystems.split(reader.path)[1]})")
                else:
                    owner[video_id] = reader.path
        if ids is not None and not duplicates:  # read only the shards holding wanted rows (a chunk of a big set)
            wanted = set(ids)
            keep = [k for k in range(len(readers)) if not wanted.isdisjoint(shard_ids[k])]
            if len(keep) < len(readers):
                for k in set(range(len(readers))) - set(keep):
                    readers[k].close()
                readers, shard_ids = [readers[k] for k in keep], [shard_ids[k] for k in keep]
                paths = [paths[k] for k in keep]
        total = sum(r.num_rows for r in readers)

        # Pass 2: vectors and small per-row data, straight into preallocated arrays.
        features = np.empty((0 if any(sparse) else total, dim), dtype=np.float32)
        sparse_parts = []
        num_frames = np.empty(total, dtype=np.int64)
        all_ids: list[str] = []
        index_values, index_lengths = [], []
        starts = np.zeros(len(readers) + 1, np.int64)
        for k, reader in enumerate(readers):
            start, stop = starts[k], starts[k] + reader.num_rows
            starts[k + 1] = stop
            if reader.sparse:
                sparse_parts.append(reader.read_sparse(dim))
            else:
                features[start:stop] = reader.read_features(dim)
            num_frames[start:stop] = reader.read_num_frames()
            values, offsets = reader.read_frame_indices()
            index_values.append(values)
            index_lengths.append(np.diff(offsets))
            all_ids.extend(shard_ids[k])
    finally:
        for reader in readers:
            reader.close()

    if duplicates:
        raise duplicate_ids_error(path, duplicates)
    if sparse_parts:
        import scipy.sparse

        features = scipy.sparse.vstack(sparse_parts, format="csr", dtype=np.float32)
    index_offsets = np.zeros(total + 1, np.int64)
    if total:
        np.cumsum(np.concatenate(index_lengths), out=index_offsets[1:])

    def frames_loader() -> tuple[np.ndarray, np.ndarray]:
        return _load_frames(path, paths, manifest, all_ids)

    logger.info("loaded %s: %d x %d from %d %s shard(s)", manifest.name, total, dim, len(paths), fmt)
    whole = FeatureSet(
        path=path,
        fmt=fmt,
        manifest=manifest,
        ids=all_ids,
        features=features,
        num_frames=num_frames,
        frame_index_values=np.concatenate(index_values) if index_values else np.zeros(0, np.int64),
        frame_index_offsets=index_offsets,
        has_frames=has_frames,
        frames_loader=frames_loader if has_frames else None,
        shards=paths,
        shard_starts=starts[:-1],
    )
    result = whole if ids is None else whole.subset(ids)
    result.check_finite()
    return result


def _load_frames(folder: str, paths: Sequence[str], manifest: Manifest, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """All shards' frame matrices in ids order, as read (the FeatureSet checks the rows it uses)."""
    readers = [_open_checked(p, manifest) for p in paths]
    try:
        if sum(r.num_rows for r in readers) != len(ids):
            raise ShardError(f"{folder}: shards changed since the feature set was loaded; load it again")
        known = all(r.frame_rows is not None for r in readers)
        total_rows = sum(r.frame_rows for r in readers) if known else 0
        matrix = np.empty((total_rows, manifest.dim), np.float32) if known else None
        parts, lengths = [], []
        at = 0
        for reader in readers:
            frames, offsets = reader.read_frames(manifest.dim)
            if known:
                if len(frames) != reader.frame_rows:
                    raise ShardError(f"{reader.path}: holds {len(frames)} frame rows, its metadata says {reader.frame_rows}")
                matrix[at : at + len(frames)] = frames
                at += len(frames)
            else:
                parts.append(frames)
            lengths.append(np.diff(offsets))
    finally:
        for reader in readers:
            reader.close()
    if matrix is None:
        matrix = np.concatenate(parts) if parts else np.zeros((0, manifest.dim), np.float32)
    offsets = np.zeros(len(ids) + 1, np.int64)
    if ids:
        np.cumsum(np.concatenate(lengths), out=offsets[1:])
    return matrix, offsets
