"""Feature shards: one row per video (or caption), in Parquet and/or HDF5, written atomically.

Layout (DESIGN §4):

* Parquet ``<stem>.parquet``, one row per video: ``video_id`` string, ``num_frames`` int64,
  ``frame_indices`` list<int64> (null when unknown), ``feature`` fixed_size_list<float32>[D],
  ``frames`` list<fixed_size_list<float32>[D]> (null when the extractor keeps no frames).
  Schema metadata: ``manifest_hash``, ``vidfuse_format``, ``dim``, ``has_frames``, ``frame_rows``.
* HDF5 ``<stem>.h5``: ``video_ids`` [N] variable-length UTF-8, ``features`` [N, D] float32,
  ``num_frames`` [N] int64, ``frame_indices`` [sum K_i] int64 flattened with
  ``frame_indices_offsets`` [N+1] int64 (row i is ``frame_indices[off[i]:off[i+1]]``; an empty
  range when unknown), and for frame-/clip-level features ``frames`` [sum T_i, D] float32 with
  ``offsets`` [N+1] int64. File attributes: ``manifest_hash``, ``vidfuse_format``, ``dim``.
* Sparse rows (bag-of-words counts, mostly zeros: dense they are captions x vocabulary float32,
  8 GB for 200k x 10k) replace ``feature`` by CSR parts. Parquet: ``feature_indices``
  list<int32> and ``feature_values`` list<float32> (metadata ``sparse`` = ``1``); HDF5:
  ``feature_indices`` [nnz] int32, ``feature_values`` [nnz] float32, ``feature_offsets`` [N+1]
  int64 (attribute ``sparse`` = 1). Readers give them as a ``scipy.sparse.csr_matrix``.

Integrity: Parquet pages carry CRC checksums and HDF5 numeric datasets the fletcher32 filter, both
verified on read, so a damaged byte inside a shard is a ShardError naming it, never a wrong value.

Atomicity: every format of a shard is first written under a temp name
``.tmp-<stem>.<random><ext>.partial`` (hidden, and not ending in ``.parquet``/``.h5``, so listing
never sees it), then all are renamed to their final names. A shard *stem* is complete when a final
file exists for every format the folder's manifest lists: a job killed between two renames leaves
an orphan that :func:`list_shards` and :func:`existing_ids` ignore (so a rerun re-extracts those
videos instead of duplicating them) and :func:`remove_incomplete_shards` deletes.

All I/O goes through Beam's ``FileSystems`` so output folders may be on gs://, s3://, hdfs://...
HDF5 cannot stream to an object store, so every HDF5 shard is built in memory and written as
bytes (which also makes a full disk a plain OSError of a write).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import uuid
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pipeline.fs import UNCOMPRESSED, FileSystems

from vidfuse.errors import VidfuseError

logger = logging.getLogger(__name__)

FORMAT_EXTENSIONS = {"parquet": ".parquet", "hdf5": ".h5"}
# HDF5 twins start with "_", so Arrow's dataset reader (pd.read_parquet(folder)) skips them;
# folders written before hold them without it, and are read as they are.
FORMAT_PREFIXES = {"parquet": "", "hdf5": "_"}
_FORMAT_ALIASES = {"parquet": "parquet", "pq": "parquet", "hdf5": "hdf5", "h5": "hdf5"}
TEMP_PREFIX = ".tmp-"
TEMP_SUFFIX = ".partial"
MANIFEST_HASH_KEY = "manifest_hash"
SOURCE_COLUMNS = ("source_size", "source_mtime_ns")  # optional, per row: the video file it was read from
FORMAT_VERSION = 1
_COPY_CHUNK = 16 << 20


class FeatureSetError(VidfuseError):
    """A feature folder cannot be used as asked (no manifest, no shards, missing ids, bad rows)."""


class ShardError(FeatureSetError):
    """One shard file is unreadable, truncated, or inconsistent with its folder's manifest."""


@dataclass
class FeatureRow:
    """One video's (or caption's) features, as the extractors emit them and shards store them."""

    video_id: str  # unique; for text features it is the caption id (e.g. "video7#3")
    feature: np.ndarray  # [D] float32, video-level (or sentence-level) vector
    frames: np.ndarray | None = None  # [T, D] float32 per-frame / per-clip matrix
    num_frames: int = 0  # frames in the source video (0: unknown)
    frame_indices: np.ndarray | None = None  # int64 sampled indices (flattened for clip windows)
    source: tuple[int, int] | None = None  # (size, mtime ns) of the video file when it was read


# --------------------------------------------------------------------------------------- names


def normalize_format(fmt: str) -> str:
    """``parquet`` | ``hdf5`` (``h5`` and ``pq`` accepted); anything else is a FeatureSetError."""
    key = str(fmt).strip().lower()
    if key not in _FORMAT_ALIASES:
        raise FeatureSetError(f"unknown shard format {fmt!r}; expected one of {sorted(FORMAT_EXTENSIONS)}")
    return _FORMAT_ALIASES[key]


def _basename(path: str) -> str:
    return FileSystems.split(path)[1]


def is_temp_name(path: str) -> bool:
    """True for a file some writer has not finished (never read as a shard)."""
    base = _basename(path)
    return base.startswith(TEMP_PREFIX) or base.endswith(TEMP_SUFFIX)


def shard_path(out_dir: str, shard_name: str, fmt: str) -> str:
    fmt = normalize_format(fmt)
    return FileSystems.join(out_dir, FORMAT_PREFIXES[fmt] + shard_name + FORMAT_EXTENSIONS[fmt])


def shard_stem(path: str) -> str:
    """``part-0`` of ``.../part-0.parquet``, ``.../_part-0.h5``, an older ``part-0.h5``, or ``part-0``."""
    base = _basename(path)
    for fmt, ext in FORMAT_EXTENSIONS.items():
        if base.endswith(ext):
            base = base[: -len(ext)]
            prefix = FORMAT_PREFIXES[fmt]
            return base[len(prefix):] if prefix and base.startswith(prefix) else base
    return base


def _is_local(path: str) -> bool:
    return FileSystems.get_scheme(path) is None


# ------------------------------------------------------------------------------------- writing


@dataclass
class SparseRows:
    """Rows whose vectors are mostly zeros (bow counts), written as CSR instead of FeatureRows.

    Why: a dense [N, |V|] float32 block of 20k captions over a 10k vocabulary is 800 MB per
    shard; its CSR form is the size of the captions' words.
    """

    ids: list[str]
    matrix: Any  # scipy.sparse.csr_matrix [N, D] float32


@dataclass
class _Packed:
    """Rows as contiguous arrays, shared by both writers."""

    ids: list[str]
    features: np.ndarray | None  # [N, D]; None for sparse rows
    num_frames: np.ndarray  # [N]
    index_values: np.ndarray  # [sum K]
    index_offsets: np.ndarray  # [N+1]
    index_present: np.ndarray  # [N] bool
    frames: np.ndarray | None  # [sum T, D]
    frame_offsets: np.ndarray | None  # [N+1]
    sparse: Any = None  # scipy.sparse.csr_matrix [N, D] float32 (then features is None)
    sources: np.ndarray | None = None  # [N, 2] int64 (size, mtime ns) of each row's video; -1 unknown

    @property
    def dim(self) -> int:
        return int((self.sparse if self.sparse is not None else self.features).shape[1])


def _offsets(lengths: Sequence[int]) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def _check_ids(ids: Sequence[str]) -> None:
    if not ids:
        raise ValueError("write_shard: no rows to write")
    if any(not isinstance(i, str) or not i for i in ids):
        raise ValueError("write_shard: every video_id must be a non-empty string")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dups = sorted({i for i in ids if i in seen or seen.add(i)})
        raise ValueError(f"write_shard: duplicate video_id(s) in one shard: {dups[:5]}")


def _pack_sparse(rows: SparseRows) -> _Packed:
    ids = list(rows.ids)
    _check_ids(ids)
    matrix = rows.matrix.tocsr()
    if matrix.ndim != 2 or matrix.shape[0] != len(ids) or matrix.shape[1] <= 0:
        raise ValueError(f"write_shard: sparse matrix of shape {matrix.shape} for {len(ids)} ids")
    matrix.sum_duplicates()
    n = len(ids)
    return _Packed(ids=ids, features=None, num_frames=np.zeros(n, np.int64), index_values=np.zeros(0, np.int64),
                   index_offsets=np.zeros(n + 1, np.int64), index_present=np.zeros(n, bool), frames=None,
                   frame_offsets=None, sparse=matrix.astype(np.float32))


def _pack(rows: Sequence[FeatureRow] | SparseRows) -> _Packed:
    """Validate rows (programming errors -> ValueError) and lay them out contiguously."""
    if isinstance(rows, SparseRows):
        return _pack_sparse(rows)
    ids = [r.video_id for r in rows]
    _check_ids(ids)
    features = [np.asarray(r.feature, dtype=np.float32) for r in rows]
    dim = features[0].shape[0] if features[0].ndim == 1 else -1
    bad = [r.video_id for r, f in zip(rows, features) if f.ndim != 1 or f.shape[0] != dim]
    if dim <= 0 or bad:
        raise ValueError(f"write_shard: feature must be 1-D of one length for all rows; offending ids {bad[:5]}")
    has = [r.frames is not None for r in rows]
    if any(has) and not all(has):
        raise ValueError("write_shard: either every row has frames or none does (mixed rows in one shard)")
    frames = frame_offsets = None
    if all(has):
        mats = [np.asarray(r.frames, dtype=np.float32) for r in rows]
        bad = [r.video_id for r, m in zip(rows, mats) if m.ndim != 2 or m.shape[1] != dim]
        if bad:
            raise ValueError(f"write_shard: frames must be [T, {dim}]; offending ids {bad[:5]}")
        frame_offsets = _offsets([m.shape[0] for m in mats])
        frames = np.concatenate(mats, axis=0) if mats else np.zeros((0, dim), np.float32)
    indices = [
        np.zeros(0, np.int64) if r.frame_indices is None else np.asarray(r.frame_indices, dtype=np.int64).ravel()
        for r in rows
    ]
    return _Packed(
        ids=ids,
        features=np.stack(features),
        num_frames=np.asarray([int(r.num_frames) for r in rows], dtype=np.int64),
        index_values=np.concatenate(indices),
        index_offsets=_offsets([len(i) for i in indices]),
        index_present=np.asarray([r.frame_indices is not None for r in rows]),
        frames=frames,
        frame_offsets=frame_offsets,
        sources=np.asarray([r.source if r.source is not None else (-1, -1) for r in rows], dtype=np.int64)
        if any(r.source is not None for r in rows) else None,
    )


def parquet_schema(dim: int, metadata: dict | None = None) -> pa.Schema:
    """The shard schema of DESIGN §4 for vectors of length ``dim``."""
    vector = pa.list_(pa.float32(), dim)
    return pa.schema(
        [
            pa.field("video_id", pa.string(), nullable=False),
            pa.field("num_frames", pa.int64(), nullable=False),
            pa.field("frame_indices", pa.list_(pa.int64())),
            pa.field("feature", vector, nullable=False),
            pa.field("frames", pa.list_(vector)),
        ],
        metadata=metadata,
    )


def _shard_metadata(packed: _Packed, manifest_hash: str) -> dict[str, str]:
    return {
        MANIFEST_HASH_KEY: manifest_hash,
        "vidfuse_format": str(FORMAT_VERSION),
        "dim": str(packed.dim),
        "has_frames": "1" if packed.frames is not None else "0",
        "frame_rows": str(0 if packed.frames is None else packed.frames.shape[0]),
        **({"sparse": "1"} if packed.sparse is not None else {}),
    }


def _sparse_table(packed: _Packed, manifest_hash: str) -> pa.Table:
    m, n = packed.sparse, len(packed.ids)
    offsets = pa.array(m.indptr.astype(np.int32))
    schema = pa.schema(
        [
            pa.field("video_id", pa.string(), nullable=False),
            pa.field("num_frames", pa.int64(), nullable=False),
            pa.field("frame_indices", pa.list_(pa.int64())),
            pa.field("feature_indices", pa.list_(pa.int32()), nullable=False),
            pa.field("feature_values", pa.list_(pa.float32()), nullable=False),
        ],
        metadata=_shard_metadata(packed, manifest_hash),
    )
    columns = [
        pa.array(packed.ids, pa.string()),
        pa.array(packed.num_frames),
        pa.nulls(n, type=pa.list_(pa.int64())),
        pa.ListArray.from_arrays(offsets, pa.array(m.indices.astype(np.int32))),
        pa.ListArray.from_arrays(offsets, pa.array(m.data.astype(np.float32))),
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _to_table(packed: _Packed, manifest_hash: str) -> pa.Table:
    if packed.sparse is not None:
        return _sparse_table(packed, manifest_hash)
    n, dim = packed.features.shape
    schema = parquet_schema(dim, _shard_metadata(packed, manifest_hash))
    vector_type = pa.list_(pa.float32(), dim)
    feature = pa.FixedSizeListArray.from_arrays(pa.array(packed.features.ravel()), type=vector_type)
    frame_indices = pa.ListArray.from_arrays(
        pa.array(packed.index_offsets.astype(np.int32)),
        pa.array(packed.index_values),
        type=pa.list_(pa.int64()),
        mask=pa.array(~packed.index_present),
    )
    if packed.frames is None:
        frames = pa.nulls(n, type=pa.list_(vector_type))
    else:
        inner = pa.FixedSizeListArray.from_arrays(pa.array(packed.frames.ravel()), type=vector_type)
        frames = pa.ListArray.from_arrays(
            pa.array(packed.frame_offsets.astype(np.int32)), inner, type=pa.list_(vector_type)
        )
    columns = [pa.array(packed.ids, pa.string()), pa.array(packed.num_frames), frame_indices, feature, frames]
    if packed.sources is not None:  # which file (size, mtime) each row was read from: a rerun redoes changed ones
        for k, name in enumerate(SOURCE_COLUMNS):
            values = packed.sources[:, k]
            columns.append(pa.array(values, pa.int64(), mask=values < 0))
            schema = schema.append(pa.field(name, pa.int64()))
    return pa.Table.from_arrays(columns, schema=schema)


def _write_parquet(path: str, packed: _Packed, manifest_hash: str) -> None:
    table = _to_table(packed, manifest_hash)
    with FileSystems.create(path, compression_type=UNCOMPRESSED) as handle:
        pq.write_table(table, handle, write_page_checksum=True)  # a flipped byte is an error, not a value


def _write_h5_file(target, packed: _Packed, manifest_hash: str) -> None:
    import h5py

    with h5py.File(target, "w") as f:
        f.attrs[MANIFEST_HASH_KEY] = manifest_hash
        f.attrs["vidfuse_format"] = FORMAT_VERSION
        f.attrs["dim"] = packed.dim
        f.create_dataset("video_ids", data=packed.ids, dtype=h5py.string_dtype("utf-8"))
        numbers = {"num_frames": packed.num_frames,
                   "frame_indices": packed.index_values, "frame_indices_offsets": packed.index_offsets}
        if packed.sparse is not None:
            f.attrs["sparse"] = 1
            numbers.update(feature_indices=packed.sparse.indices.astype(np.int32),
                           feature_values=packed.sparse.data.astype(np.float32),
                           feature_offsets=packed.sparse.indptr.astype(np.int64))
        else:
            numbers["features"] = packed.features
        if packed.frames is not None:
            numbers.update(frames=packed.frames, offsets=packed.frame_offsets)
        if packed.sources is not None:
            numbers.update(zip(SOURCE_COLUMNS, np.ascontiguousarray(packed.sources.T)))
        for name, data in numbers.items():
            # fletcher32: a flipped byte is a read error, not a value (needs chunks: none when empty)
            f.create_dataset(name, data=data, fletcher32=bool(data.size))


def _write_hdf5(path: str, packed: _Packed, manifest_hash: str) -> None:
    """Built in memory (one shard), then written as plain bytes.

    Why: written in place, a full disk failed inside the HDF5 library's own flush, which left
    the file open and crashed the process at exit; as bytes, it is an OSError of a write like
    any other. Object stores (append-only streams, where h5py needs a seekable file) work alike.
    """
    buffer = io.BytesIO()
    _write_h5_file(buffer, packed, manifest_hash)
    view = buffer.getbuffer()
    with FileSystems.create(path, compression_type=UNCOMPRESSED) as dst:
        for start in range(0, len(view), _COPY_CHUNK):
            dst.write(view[start : start + _COPY_CHUNK])


_WRITERS = {"parquet": _write_parquet, "hdf5": _write_hdf5}


def new_shard_name() -> str:
    """A fresh shard stem: unique across reruns and workers, so no write replaces another's rows."""
    return f"part-{uuid.uuid4().hex[:16]}"


def write_shard(
    out_dir: str,
    shard_name: str,
    rows: Sequence[FeatureRow] | SparseRows,
    formats: Sequence[str],
    manifest_hash: str,
) -> list[str]:
    """Write ``rows`` as ``<out_dir>/<shard_name>.parquet`` and/or ``.h5``; returns the final paths.

    Every format is written under a temp name first and all are renamed only once all are
    complete, so a killed job leaves no half shard under a final name.
    """
    fmts = list(dict.fromkeys(normalize_format(f) for f in formats))
    if not fmts:
        raise ValueError("write_shard: no formats given")
    if not shard_name or "/" in shard_name or shard_name.startswith((".", "_")):
        raise ValueError(f"write_shard: bad shard name {shard_name!r}")
    packed = _pack(rows)
    if _is_local(out_dir):
        os.makedirs(out_dir, exist_ok=True)  # h5py, unlike FileSystems.create, makes no folders
    token = uuid.uuid4().hex[:12]
    temps, finals = [], []
    try:
        for fmt in fmts:
            ext = FORMAT_EXTENSIONS[fmt]
            tmp = FileSystems.join(out_dir, f"{TEMP_PREFIX}{shard_name}.{token}{ext}{TEMP_SUFFIX}")
            temps.append(tmp)
            _WRITERS[fmt](tmp, packed, manifest_hash)
            finals.append(shard_path(out_dir, shard_name, fmt))
        if not _is_local(out_dir):
            existing = [p for p in finals if FileSystems.exists(p)]
            if existing:  # object stores do not rename over an existing object
                FileSystems.delete(existing)
        FileSystems.rename(temps, finals)
    except BaseException:
        leftovers = [t for t in temps if FileSystems.exists(t)]
        if leftovers:
            with contextlib.suppress(Exception):
                FileSystems.delete(leftovers)
        raise
    logger.debug("wrote shard %s (%d rows, %s)", shard_name, len(packed.ids), fmts)
    return finals


# ------------------------------------------------------------------------------------- listing


def _final_files(out_dir: str) -> dict[str, dict[str, str]]:
    """{format: {stem: path}} of final-named shard files (temp and hidden names skipped)."""
    found: dict[str, dict[str, str]] = {}
    for fmt, ext in FORMAT_EXTENSIONS.items():
        pattern = FileSystems.join(out_dir, "*" + ext)
        found[fmt] = {}
        for meta in FileSystems.match([pattern])[0].metadata_list:
            base = _basename(meta.path)
            prefixed = bool(FORMAT_PREFIXES[fmt]) and base.startswith(FORMAT_PREFIXES[fmt])
            if is_temp_name(base) or not base.endswith(ext) or (base.startswith((".", "_")) and not prefixed):
                continue
            stem = shard_stem(base)
            if prefixed or stem not in found[fmt]:  # the current name wins over an older one
                found[fmt][stem] = meta.path
    return found


def _required_formats(out_dir: str, formats: Sequence[str] | None, found: dict[str, dict]) -> list[str]:
    if formats is not None:
        return list(dict.fromkeys(normalize_format(f) for f in formats))
    from pipeline.manifest import read_manifest

    manifest = read_manifest(out_dir)
    if manifest is not None and manifest.formats:
        return list(dict.fromkeys(normalize_format(f) for f in manifest.formats))
    return [fmt for fmt, stems in found.items() if stems]


def _complete_stems(out_dir: str, formats: Sequence[str] | None) -> tuple[dict, list[str], list[str]]:
    """(found files, required formats, stems present in every required format)."""
    found = _final_files(out_dir)
    required = _required_formats(out_dir, formats, found)
    if not required:
        return found, required, []
    stems = set(found[required[0]])
    for fmt in required[1:]:
        stems &= set(found[fmt])
    return found, required, sorted(stems)


def incomplete_shards(out_dir: str, formats: Sequence[str] | None = None) -> list[str]:
    """Final-named files whose shard lacks a twin in another required format (killed mid-rename)."""
    found, required, complete = _complete_stems(out_dir, formats)
    keep = set(complete)
    return sorted(path for fmt in required for stem, path in found[fmt].items() if stem not in keep)


def list_shards(out_dir: str, fmt: str, formats: Sequence[str] | None = None) -> list[str]:
    """Complete ``fmt`` shards of a folder, sorted by name (the order readers concatenate rows in).

    A shard counts when its file exists under its final name for every format the folder's
    manifest lists (``formats`` overrides that); orphans are skipped with a warning.
    """
    fmt = normalize_format(fmt)
    found, required, complete = _complete_stems(out_dir, formats)
    if fmt not in required:
        complete = sorted(found[fmt])
    orphans = sorted(set(found[fmt]) - set(complete))
    if orphans:
        logger.warning(
            "%s: ignoring %d %s shard(s) without their %s twin (a job killed while renaming?): %s",
            out_dir, len(orphans), fmt, "/".join(required), orphans[:5],
        )
    return [found[fmt][stem] for stem in complete]


def remove_incomplete_shards(out_dir: str, formats: Sequence[str] | None = None, temps: bool = True) -> list[str]:
    """Delete orphan shard files (and, with ``temps``, leftover temp files); returns what was removed.

    Call it before a job starts writing into ``out_dir``, never while another job writes there.
    """
    doomed = incomplete_shards(out_dir, formats)
    if temps:
        pattern = FileSystems.join(out_dir, TEMP_PREFIX + "*")
        doomed += [m.path for m in FileSystems.match([pattern])[0].metadata_list if is_temp_name(m.path)]
    if doomed:
        FileSystems.delete(doomed)
        logger.info("%s: removed %d incomplete shard/temp file(s)", out_dir, len(doomed))
    return doomed


def complete_shards(out_dir: str, formats: Sequence[str] | None = None) -> list[tuple[str, ...]]:
    """Every complete shard of a folder as its paths, one per required format (first: the
    format its ids are read from), sorted by name."""
    found, required, complete = _complete_stems(out_dir, formats)
    return [tuple(found[fmt][stem] for fmt in required) for stem in complete]


def checked_ids(paths: Sequence[str], manifest) -> list[str]:
    """The ids of one complete shard (``paths``: one per format), refused (ShardError naming the
    file) when a resume must not build on it: unreadable, written under another manifest than
    ``manifest`` (None: not checked), or a copy in another format unreadable or unlike it."""
    return [video_id for video_id, _ in checked_rows(paths, manifest, sources=False)]


def checked_rows(paths: Sequence[str], manifest, sources: bool = True) -> list[tuple[str, tuple[int, int] | None]]:
    """(id, recorded source fingerprint or None) per row of one complete shard, checked as
    :func:`checked_ids` says; ``sources=False`` reads the id column only."""
    with open_shard(paths[0]) as shard:
        if manifest is not None:
            check_header(shard, manifest)
        check_twins(shard, list(paths[1:]))
        ids = shard.ids()
        if not sources:
            return [(video_id, None) for video_id in ids]
        recorded = shard.read_sources().tolist()
    return [(v, (size, mtime) if size >= 0 and mtime >= 0 else None) for v, (size, mtime) in zip(ids, recorded)]


def existing_ids(out_dir: str, formats: Sequence[str] | None = None) -> set[str]:
    """Ids already present in complete shards; reads only the id column/dataset.

    What a resume must not build on is refused (ShardError naming the file): see
    :func:`checked_ids`, and an id that two shards hold. (The extraction job reads the same
    on its workers: ``pipeline.done_set``.)
    """
    from pipeline.manifest import read_manifest

    shards = complete_shards(out_dir, formats)
    manifest = read_manifest(out_dir) if shards else None
    owner: dict[str, str] = {}
    duplicates: list[str] = []
    for paths in shards:
        for video_id in checked_ids(paths, manifest):
            if video_id in owner:
                duplicates.append(f"{video_id!r} ({_basename(owner[video_id])} and {_basename(paths[0])})")
            else:
                owner[video_id] = paths[0]
    if duplicates:
        raise duplicate_ids_error(out_dir, duplicates)
    return set(owner)


# ------------------------------------------------------------------------------------- reading


@contextlib.contextmanager
def _errors(path: str, what: str) -> Iterator[None]:
    """Turn library errors on a damaged file into a ShardError naming the file."""
    try:
        yield
    except ShardError:
        raise
    except (OSError, pa.ArrowException, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise ShardError(f"{path}: cannot read {what} (truncated or corrupt shard?): {exc}") from None


class ShardReader:
    """Low-level access to one shard file; values are checked and failures name the file.

    Attributes after opening: ``manifest_hash`` (None if absent), ``num_rows``, ``dim`` (None for
    a variable-length feature column), ``has_frames``, ``frame_rows`` (sum of T; None if unknown).
    """

    path: str
    manifest_hash: str | None
    num_rows: int
    dim: int | None
    has_frames: bool
    frame_rows: int | None
    sparse: bool = False  # CSR rows (bow counts); read them with read_sparse

    def __enter__(self) -> "ShardReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass

    def ids(self) -> list[str]:
        raise NotImplementedError

    def read_features(self, dim: int) -> np.ndarray:
        """[N, dim] float32; rows of another length are a ShardError naming their ids."""
        raise NotImplementedError

    def read_num_frames(self) -> np.ndarray:
        raise NotImplementedError

    def _sparse_parts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(column indices, values, [N+1] offsets) of a sparse shard, as stored."""
        raise NotImplementedError

    def read_sources(self) -> np.ndarray:
        """[N, 2] int64 (size, mtime ns) of the file each row was read from; -1 where not recorded."""
        raise NotImplementedError

    def read_sparse(self, dim: int):
        """[N, dim] ``scipy.sparse.csr_matrix`` float32 of a sparse shard; bad parts name the file."""
        import scipy.sparse

        if not self.sparse:
            raise ShardError(f"{self.path}: holds dense feature vectors, not sparse ones")
        if self.dim != dim:
            raise ShardError(f"{self.path}: sparse vectors have length {self.dim}, manifest dim is {dim}")
        indices, values, offsets = self._sparse_parts()
        if (len(offsets) != self.num_rows + 1 or offsets[0] != 0 or offsets[-1] != len(indices)
                or len(values) != len(indices) or np.any(np.diff(offsets) < 0)):
            raise ShardError(f"{self.path}: sparse feature parts do not fit together (corrupt)")
        if len(indices) and (indices.min() < 0 or indices.max() >= dim):
            raise ShardError(f"{self.path}: sparse column indices outside [0, {dim}) (corrupt)")
        return scipy.sparse.csr_matrix(
            (np.asarray(values, np.float32), np.asarray(indices, np.int32), np.asarray(offsets, np.int64)),
            shape=(self.num_rows, dim),
        )

    def read_frame_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """(flat int64 values, [N+1] offsets)."""
        raise NotImplementedError

    def read_frames(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """([sum T, dim] float32, [N+1] int64 offsets)."""
        raise NotImplementedError

    def _check_rows(self, what: str, n: int) -> None:
        if n != self.num_rows:
            raise ShardError(f"{self.path}: {what} has {n} rows, expected {self.num_rows}")


def _offsets_from_lengths(lengths: pa.Array) -> np.ndarray:
    return _offsets(lengths.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64))


class _ParquetShard(ShardReader):
    def __init__(self, path: str):
        self.path = path
        self._stream = None
        with _errors(path, "the Parquet footer"):
            if _is_local(path):
                self._file = pq.ParquetFile(path, memory_map=True, page_checksum_verification=True)
            else:
                self._stream = FileSystems.open(path, compression_type=UNCOMPRESSED)
                self._file = pq.ParquetFile(self._stream, page_checksum_verification=True)
            schema = self._file.schema_arrow
        meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
        self.manifest_hash = meta.get(MANIFEST_HASH_KEY)
        self.num_rows = self._file.metadata.num_rows
        self.sparse = "feature_indices" in schema.names
        needed = ("video_id", "feature_values") if self.sparse else ("video_id", "feature")
        missing = [c for c in needed if c not in schema.names]
        if missing:
            raise ShardError(f"{path}: not a feature shard (missing column(s) {missing})")
        ftype = None if self.sparse else schema.field("feature").type
        if self.sparse:
            if not meta.get("dim", "").isdigit():
                raise ShardError(f"{path}: sparse shard without its 'dim' metadata (corrupt)")
            self.dim = int(meta["dim"])
        elif pa.types.is_fixed_size_list(ftype):
            self.dim = ftype.list_size
        elif pa.types.is_list(ftype) or pa.types.is_large_list(ftype):
            self.dim = None
        else:
            raise ShardError(f"{path}: column 'feature' has type {ftype}, expected a list of floats")
        self.has_frames = meta.get("has_frames") == "1" if "has_frames" in meta else "frames" in schema.names
        self.frame_rows = int(meta["frame_rows"]) if "frame_rows" in meta else None
        self._columns = set(schema.names)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _column(self, name: str) -> pa.Array:
        with _errors(self.path, f"column {name!r}"):
            column = self._file.read(columns=[name]).column(name).combine_chunks()
        self._check_rows(f"column {name!r}", len(column))
        return column

    def ids(self) -> list[str]:
        column = self._column("video_id")
        if column.null_count:
            raise ShardError(f"{self.path}: {column.null_count} row(s) have no video_id")
        return column.to_pylist()

    def _vectors(self, column: pa.Array, dim: int, what: str, ids_of_rows) -> np.ndarray:
        if pa.types.is_fixed_size_list(column.type):
            if column.type.list_size != dim:
                raise ShardError(
                    f"{self.path}: {what} vectors have length {column.type.list_size}, manifest dim is {dim}"
                )
        else:
            lengths = column.value_lengths().fill_null(-1).to_numpy(zero_copy_only=False)
            bad = np.flatnonzero(lengths != dim)
            if bad.size:
                names = ids_of_rows(bad[:5])
                raise ShardError(
                    f"{self.path}: {bad.size} {what} row(s) do not have length {dim} (manifest dim), "
                    f"e.g. {names} with lengths {lengths[bad[:5]].tolist()}"
                )
        with _errors(self.path, what):
            values = column.flatten().to_numpy(zero_copy_only=False)
        return np.asarray(values, dtype=np.float32).reshape(-1, dim)

    def _sparse_parts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        indices, values = self._column("feature_indices"), self._column("feature_values")
        with _errors(self.path, "the sparse feature columns"):
            if indices.null_count or values.null_count:
                raise ShardError(f"{self.path}: rows without sparse feature parts (corrupt)")
            offsets = _offsets_from_lengths(indices.value_lengths())
            if not np.array_equal(offsets, _offsets_from_lengths(values.value_lengths())):
                raise ShardError(f"{self.path}: sparse indices and values differ in length (corrupt)")
            return (indices.flatten().to_numpy(zero_copy_only=False), values.flatten().to_numpy(zero_copy_only=False),
                    offsets)

    def read_features(self, dim: int) -> np.ndarray:
        if self.sparse:
            return self.read_sparse(dim).toarray()
        column = self._column("feature")
        if column.null_count:
            bad = np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))
            raise ShardError(f"{self.path}: {bad.size} row(s) have no feature, e.g. {self._ids_at(bad[:5])}")
        return self._vectors(column, dim, "feature", self._ids_at)

    def _ids_at(self, rows: np.ndarray) -> list[str]:
        ids = self.ids()
        return [ids[i] for i in rows]

    def read_sources(self) -> np.ndarray:
        out = np.full((self.num_rows, 2), -1, np.int64)
        for k, name in enumerate(SOURCE_COLUMNS):
            if name in self._columns:
                out[:, k] = self._column(name).fill_null(-1).to_numpy(zero_copy_only=False)
        return out

    def read_num_frames(self) -> np.ndarray:
        if "num_frames" not in self._columns:
            return np.zeros(self.num_rows, np.int64)
        return self._column("num_frames").fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)

    def read_frame_indices(self) -> tuple[np.ndarray, np.ndarray]:
        if "frame_indices" not in self._columns:
            return np.zeros(0, np.int64), np.zeros(self.num_rows + 1, np.int64)
        column = self._column("frame_indices")
        values = column.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
        return values, _offsets_from_lengths(column.value_lengths())

    def read_frames(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        column = self._column("frames")
        if column.null_count:
            raise ShardError(f"{self.path}: {column.null_count} row(s) have no frames while others do")
        offsets = _offsets_from_lengths(column.value_lengths())
        with _errors(self.path, "column 'frames'"):
            inner = column.flatten()
        frames = self._vectors(inner, dim, "frames", lambda rows: [f"frame row {r}" for r in rows])
        return frames, offsets


class _HDF5Shard(ShardReader):
    def __init__(self, path: str):
        import h5py

        self.path = path
        self._stream = None
        with _errors(path, "the HDF5 file"):
            if _is_local(path):
                self._file = h5py.File(path, "r")
            else:
                self._stream = FileSystems.open(path, compression_type=UNCOMPRESSED)
                self._file = h5py.File(self._stream, "r")
            self.sparse = "feature_indices" in self._file
            needed = ("video_ids", "feature_values", "feature_offsets") if self.sparse else ("video_ids", "features")
            missing = [k for k in needed if k not in self._file]
            if missing:
                raise ShardError(f"{path}: not a feature shard (missing dataset(s) {missing})")
            stored = self._file.attrs.get(MANIFEST_HASH_KEY)
            if isinstance(stored, bytes):
                stored = stored.decode()
            self.manifest_hash = None if stored is None else str(stored)
            if self.sparse:
                self.num_rows, self.dim = int(self._file["video_ids"].shape[0]), int(self._file.attrs["dim"])
            else:
                shape = self._file["features"].shape
                if len(shape) != 2:
                    raise ShardError(f"{path}: dataset 'features' has shape {shape}, expected [N, D]")
                self.num_rows, self.dim = int(shape[0]), int(shape[1])
            self.has_frames = "frames" in self._file
            self.frame_rows = int(self._file["frames"].shape[0]) if self.has_frames else 0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._file.close()
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _dataset(self, name: str, rows: int | None = None) -> np.ndarray:
        with _errors(self.path, f"dataset {name!r}"):
            if name not in self._file:
                raise ShardError(f"{self.path}: dataset {name!r} is missing")
            data = self._file[name][()]
        if rows is not None and len(data) != rows:
            raise ShardError(f"{self.path}: dataset {name!r} has {len(data)} rows, expected {rows}")
        return data

    def ids(self) -> list[str]:
        with _errors(self.path, "dataset 'video_ids'"):
            ids = self._file["video_ids"].asstr()[()].tolist()
        self._check_rows("dataset 'video_ids'", len(ids))
        return ids

    def _sparse_parts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        indices, offsets = self._flat("feature_indices", "feature_offsets")
        return indices, self._dataset("feature_values", len(indices)), offsets

    def read_features(self, dim: int) -> np.ndarray:
        if self.sparse:
            return self.read_sparse(dim).toarray()
        if self.dim != dim:
            raise ShardError(f"{self.path}: feature vectors have length {self.dim}, manifest dim is {dim}")
        return np.asarray(self._dataset("features", self.num_rows), dtype=np.float32)

    def read_sources(self) -> np.ndarray:
        out = np.full((self.num_rows, 2), -1, np.int64)
        for k, name in enumerate(SOURCE_COLUMNS):
            if name in self._file:
                out[:, k] = self._dataset(name, self.num_rows)
        return out

    def read_num_frames(self) -> np.ndarray:
        if "num_frames" not in self._file:
            return np.zeros(self.num_rows, np.int64)
        return self._dataset("num_frames", self.num_rows).astype(np.int64)

    def _flat(self, values_name: str, offsets_name: str) -> tuple[np.ndarray, np.ndarray]:
        values = self._dataset(values_name)
        offsets = self._dataset(offsets_name, self.num_rows + 1).astype(np.int64)
        if offsets[0] != 0 or offsets[-1] != len(values) or np.any(np.diff(offsets) < 0):
            raise ShardError(f"{self.path}: dataset {offsets_name!r} does not index {values_name!r} (corrupt)")
        return values, offsets

    def read_frame_indices(self) -> tuple[np.ndarray, np.ndarray]:
        if "frame_indices" not in self._file:
            return np.zeros(0, np.int64), np.zeros(self.num_rows + 1, np.int64)
        values, offsets = self._flat("frame_indices", "frame_indices_offsets")
        return values.astype(np.int64), offsets

    def read_frames(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        frames, offsets = self._flat("frames", "offsets")
        if frames.ndim != 2 or frames.shape[1] != dim:
            raise ShardError(f"{self.path}: dataset 'frames' has shape {frames.shape}, manifest dim is {dim}")
        return np.asarray(frames, dtype=np.float32), offsets


def open_shard(path: str) -> ShardReader:
    """A reader for one shard file, by extension; a damaged file is a ShardError naming it."""
    if is_temp_name(path):
        raise ShardError(f"{path}: a temporary file of an unfinished write, not a shard")
    if path.endswith(FORMAT_EXTENSIONS["parquet"]):
        return _ParquetShard(path)
    if path.endswith(FORMAT_EXTENSIONS["hdf5"]):
        return _HDF5Shard(path)
    raise ShardError(f"{path}: not a shard file (expected .parquet or .h5)")


# ------------------------------------------------------------------------------------- checks

REEXTRACT = (
    "delete that shard (every format) and rerun the extraction (`vidfuse extract` / `extract-text`) "
    "into this folder: a rerun re-extracts the rows no complete shard holds"
)


def check_header(shard: ShardReader, manifest) -> None:
    """Refuse a shard that does not belong to ``manifest``'s folder: other dim, other config."""
    if shard.dim is not None and shard.dim != manifest.dim:
        raise ShardError(
            f"{shard.path}: holds vectors of length {shard.dim}, manifest dim is {manifest.dim} (manifest.json)"
        )
    expected = manifest.hash()
    if shard.manifest_hash is None:
        raise ShardError(f"{shard.path}: carries no manifest_hash (not written by vidfuse?); refusing to mix it in")
    if shard.manifest_hash != expected:
        raise ShardError(
            f"{shard.path}: written under manifest {shard.manifest_hash}, but the folder's manifest.json has "
            f"{expected} (extracted with another config, or copied from another folder); move it out or re-extract"
        )


def _format_of(path: str) -> str:
    return next((fmt for fmt, ext in FORMAT_EXTENSIONS.items() if path.endswith(ext)), "?")


def check_twins(shard: ShardReader, twin_paths: Sequence[str], ids: Sequence[str] | None = None) -> None:
    """Refuse a shard whose copies in other formats are unreadable or hold other rows.

    Readers read one format; the others must not silently stay broken (a resume counts their
    rows as done). Compares headers (rows, dim, manifest hash, frame rows) and, given ``ids``
    (the shard's), the ids too.
    """
    for twin_path in twin_paths:
        try:
            twin = open_shard(twin_path)
        except ShardError as exc:
            raise ShardError(
                f"{exc}; its {_format_of(shard.path)} copy {_basename(shard.path)} reads, but both copies must "
                f"hold the same rows: {REEXTRACT}"
            ) from None
        with twin:
            diffs = [
                f"{what} {a} vs {b}"
                for what, a, b in (
                    ("rows", shard.num_rows, twin.num_rows),
                    ("dim", shard.dim, twin.dim),
                    ("manifest_hash", shard.manifest_hash, twin.manifest_hash),
                    ("frames", shard.has_frames, twin.has_frames),
                    ("frame rows", shard.frame_rows, twin.frame_rows),
                )
                if a is not None and b is not None and a != b
            ]
            if not diffs and ids is not None:
                twin_ids = twin.ids()
                row = next((i for i, (a, b) in enumerate(zip(ids, twin_ids)) if a != b), None)
                if row is not None:
                    diffs.append(f"row {row} holds id {ids[row]!r} vs {twin_ids[row]!r}")
        if diffs:
            raise ShardError(
                f"{shard.path} and its {_format_of(twin_path)} copy {_basename(twin_path)} disagree "
                f"({'; '.join(diffs)}): one was damaged or replaced; {REEXTRACT}"
            )


def duplicate_ids_error(out_dir: str, duplicates: Sequence[str]) -> ShardError:
    shown = "; ".join(duplicates[:3]) + (" ..." if len(duplicates) > 3 else "")
    return ShardError(
        f"{out_dir}: {len(duplicates)} id(s) appear in more than one shard: {shown}; "
        "a shard was copied in twice? delete one of the two"
    )
