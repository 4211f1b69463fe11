"""FAISS index of fused video embeddings, stored as one folder per index.

Layout of an index folder (DESIGN §1): ``index.faiss`` (faiss.write_index of a CPU copy),
``ids.parquet`` (column ``video_id``; row position = faiss id) and ``meta.json`` (how it was
built). A save replaces the whole folder by a directory swap, so a killed save leaves the
previous index or none, never a mix of old and new files.

Index types come from FAISS factory strings ("Flat", "IVF4096,Flat", "HNSW32",
"IVF1024,PQ64", ...) so anything FAISS can build is one string away.

A large index may be kept as N shards, ``index-000.faiss`` ... (meta.json ``shards`` lists
their sizes; ids.parquet stays one file in shard order). The shards share one trained
quantizer and are searched together by ``faiss.IndexShards``, which merges their top-k.
Building streams: :meth:`VideoIndex.empty`, :meth:`~VideoIndex.train` on a sample, then
:meth:`~VideoIndex.add` chunk by chunk, so memory is one chunk plus the index.
"""

from __future__ import annotations

import datetime as _dt
import glob
import json
import logging
import os
import shutil
import tempfile
from typing import Any, Sequence

try:
    import faiss
except ImportError:  # the install chose no FAISS build (pyproject extras `cpu` / `gpu`)
    from vidfuse.errors import VidfuseError

    raise VidfuseError("FAISS is not installed: pip install 'vidfuse[cpu]' (or 'vidfuse[gpu]' for CUDA 12)") from None
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vidfuse.errors import VidfuseError
from vidfuse.files import as_umask_allows

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
META_FILE = "meta.json"
ID_COLUMN = "video_id"
FORMAT_VERSION = 1

METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
DEVICES = ("auto", "cpu", "gpu", "cuda")  # "cuda" and "cuda:N" mean "gpu" (the torch name)
SHARD_FILE = "index-{:03d}.faiss"
# k-means gets little from more than this many rows per centroid (FAISS subsamples to it anyway).
ROWS_PER_CENTROID = 256
# Below this many rows per centroid FAISS warns that the clustering is poor.
MIN_GOOD_ROWS_PER_CENTROID = 39


class IndexStoreError(VidfuseError):
    """An index folder is missing, inconsistent or corrupt, or an index input is invalid."""


def gpu_available() -> bool:
    """True when this FAISS build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def normalize_device(device: str) -> str:
    """'cuda', 'cuda:N' and 'gpu' all mean the GPU(s); 'auto' and 'cpu' stay as they are."""
    device = str(device).strip().lower()
    if device == "cuda" or device.startswith("cuda:"):
        return "gpu"
    return device


def _is_index_file(name: str) -> bool:
    return name in (INDEX_FILE, IDS_FILE, META_FILE) or (
        name.startswith("index-") and name.endswith(".faiss") and name[6:-6].isdigit())


def _gpu_resources(gpu: int):
    """One StandardGpuResources per GPU for the whole process (each holds scratch memory)."""
    cache = _gpu_resources.__dict__.setdefault("cache", {})
    if gpu not in cache:
        cache[gpu] = faiss.StandardGpuResources()
    return cache[gpu]


def _gpu_free_bytes() -> int | None:
    """Free memory of the smallest GPU, when torch can tell (FAISS has no such query)."""
    try:
        import torch

        return min(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
    except Exception:  # noqa: BLE001 - no torch/CUDA: unknown, try the move and see
        return None


def _ivf_list_bytes(ivf) -> int:
    """Memory of an IVF index's inverted lists: a code and an int64 id per vector."""
    return int(ivf.ntotal) * (int(ivf.code_size) + 8)


def _as_matrix(x: Any, dim: int | None, what: str) -> np.ndarray:
    """float32, C-contiguous, 2-D: the only layout FAISS accepts without copying badly."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise IndexStoreError(f"{what} must be a 2-D array [n, dim], got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise IndexStoreError(f"{what} have dim {arr.shape[1]}, the index has dim {dim}")
    if not np.issubdtype(arr.dtype, np.number):
        raise IndexStoreError(f"{what} must be numeric, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _check_ids(ids: Sequence[str], n: int, what: str) -> list[str]:
    ids = [str(i) for i in ids]
    if len(ids) != n:
        raise IndexStoreError(f"{what}: {n} embeddings but {len(ids)} ids")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dups = [i for i in ids if i in seen or seen.add(i)]
        raise IndexStoreError(f"{what}: duplicate video ids {sorted(set(dups))[:5]}")
    return ids


def _code_stages(index: faiss.Index) -> list[Any]:
    """The index, the index behind its transforms and its IVF, downcast: where PQ codes live."""
    stages: list[Any] = [index]
    if isinstance(index, faiss.IndexPreTransform):
        stages.append(faiss.downcast_index(index.index))
    ivf = _ivf_of(index)
    if ivf is not None:
        stages.append(faiss.downcast_index(ivf))
    return stages


def _min_train_rows(index: faiss.Index) -> int:
    """Fewest training rows the factory's k-means stages accept (IVF nlist, PQ 2**nbits)."""
    need = max(1, _centroids(index))
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            vt = faiss.downcast_VectorTransform(index.chain.at(i))
            if isinstance(vt, faiss.OPQMatrix):
                need = max(need, 2 ** 8)
    for obj in _code_stages(index):
        pq_ = getattr(obj, "pq", None)
        if pq_ is not None and hasattr(pq_, "nbits"):
            need = max(need, 2 ** int(pq_.nbits))
    return need


def _train_transforms_uncentred(index: faiss.Index, x: np.ndarray) -> None:
    """Train an inner-product index's transforms, with any PCA left uncentred.

    FAISS's PCAMatrix subtracts the training mean. Under L2 that shift changes no distance;
    under inner product it adds -mean.x to each vector's score, an offset that differs per
    vector, so the ranking changes: on clustered unit vectors recall@10 stopped near 0.93
    whatever the number of dims kept. Without the shift the transform is an orthogonal
    projection onto the principal subspace, which keeps inner products inside it. The
    trained transforms are then skipped by ``IndexPreTransform.train``, which trains the rest.
    """
    if not isinstance(index, faiss.IndexPreTransform):
        return
    xt = x
    for i in range(index.chain.size()):
        vt = faiss.downcast_VectorTransform(index.chain.at(i))
        if not vt.is_trained:
            vt.train(xt)
            if isinstance(vt, faiss.PCAMatrix):
                faiss.copy_array_to_vector(np.zeros(vt.d_in, dtype=np.float32), vt.mean)
                faiss.copy_array_to_vector(np.zeros(vt.d_out, dtype=np.float32), vt.b)
        if i + 1 < index.chain.size():
            xt = vt.apply(xt)


def _skip_polysemous_training(index: faiss.Index) -> None:
    """Turn off FAISS's polysemous training of PQ codes (``PQ<m>`` without ``np``).

    It reorders each codebook so that Hamming distances between codes follow the real
    ones, which only polysemous search (``polysemous_ht``) uses; vidfuse searches by
    asymmetric distance, which the reordering does not change. It is also most of a PQ
    index's training time here: 14 s against 1.1 s for ``IVF64,PQ16`` on 20,000 x 128, the
    same search results either way.
    """
    for obj in _code_stages(index):
        if hasattr(obj, "do_polysemous_training"):
            obj.do_polysemous_training = False


def sample_positions(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted positions of a seeded sample of ``size`` rows out of ``n`` (all when size >= n):
    the rows an index trains on, whether they come from one matrix or are read from shards."""
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def _centroids(index: faiss.Index) -> int:
    ivf = _ivf_of(index)
    return 0 if ivf is None else int(ivf.nlist)


def resolve_device(device: str, what: str) -> str:
    """'cpu' or 'gpu': where an index asked to run on ``device`` runs (a GPU asked for and
    missing is an error, 'auto' falls back to the CPU)."""
    device = normalize_device(device)
    if device not in DEVICES:
        raise IndexStoreError(f"{what}: device must be one of {DEVICES} (or cuda:N), got {device!r}")
    if device == "cpu" or (device == "auto" and not gpu_available()):
        return "cpu"
    if not gpu_available():
        raise IndexStoreError(
            f"{what}: device {device!r} asked but this FAISS build has no GPU support or sees no GPU "
            f"(faiss {faiss.__version__}, get_num_gpus()={faiss.get_num_gpus()}); use --device cpu"
        )
    return "gpu"


def _to_device(cpu_index: faiss.Index, device: str, what: str, gpu: int | None = None) -> tuple[faiss.Index, str]:
    """Move to the GPUs when asked (or when 'auto' finds one); returns (index, device used).

    One index goes to all GPUs, sharded across them (``gpu``: to that one GPU only). An IVF
    index larger than a GPU's free memory keeps its inverted lists (the codes) in CPU memory
    and moves only its coarse quantizer, which is where an IVF search spends its time
    assigning queries; that is FAISS's recipe for indexes beyond GPU memory.
    """
    device = normalize_device(device)
    if resolve_device(device, what) == "cpu":
        return cpu_index, "cpu"
    free = _gpu_free_bytes()
    ivf = _ivf_of(cpu_index)
    if ivf is not None and free is not None and _ivf_list_bytes(ivf) > 0.8 * free * faiss.get_num_gpus():
        # "gpu": saving goes through index_gpu_to_cpu, which brings the quantizer back
        log.info("index larger than GPU memory: coarse quantizer on GPU, inverted lists stay on CPU")
        ivf.quantizer = faiss.index_cpu_to_gpu(_gpu_resources(gpu or 0), gpu or 0, ivf.quantizer)
        return cpu_index, "gpu"
    try:
        if gpu is not None:
            return faiss.index_cpu_to_gpu(_gpu_resources(gpu), gpu, cpu_index), "gpu"
        options = faiss.GpuMultipleClonerOptions()
        options.shard = True  # each GPU holds 1/ngpu of the vectors, results merged by FAISS
        return faiss.index_cpu_to_all_gpus(cpu_index, options), "gpu"
    except RuntimeError as e:  # e.g. HNSW has no GPU implementation
        if device == "gpu":
            raise IndexStoreError(f"{what}: this index type cannot run on GPU: {e}") from e
        log.info("index type has no GPU implementation, staying on CPU (%s)", e)
        return cpu_index, "cpu"


def _read_index(path: str) -> faiss.Index:
    if not os.path.isfile(path):
        raise IndexStoreError(f"index folder {os.path.dirname(path)} has no {os.path.basename(path)}")
    try:
        return faiss.read_index(path)
    except RuntimeError as e:
        raise IndexStoreError(f"{path} is not a readable FAISS index: {e}") from e


def _set_param(index: faiss.Index, device: str, name: str, value: float) -> None:
    ps = faiss.GpuParameterSpace() if device == "gpu" else faiss.ParameterSpace()
    ps.set_index_parameter(index, name, value)


def _ivf_of(index: faiss.Index):
    try:
        return faiss.extract_index_ivf(index)
    except (RuntimeError, TypeError):
        return None


def _fsync_file(path: str) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # same folder tree: a second name, no copy
    except OSError:
        shutil.copy2(src, dst)


def _entries_besides_index(folder: str) -> list[str]:
    return [e for e in os.listdir(folder) if not _is_index_file(e)]


def _link_entries(src: str, dst: str) -> None:
    """Give ``dst`` what ``src`` holds besides the index files (hard links; ``src`` keeps them)."""
    for entry in _entries_besides_index(src):
        source, target = os.path.join(src, entry), os.path.join(dst, entry)
        if os.path.islink(source):
            os.symlink(os.readlink(source), target)
        elif os.path.isdir(source):
            shutil.copytree(source, target, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(source, target)


def _carry_entries(src: str, dst: str) -> None:
    """Move what ``src`` holds besides the index files into ``dst`` (where ``dst`` lacks it)."""
    for entry in _entries_besides_index(src):
        target = os.path.join(dst, entry)
        if not os.path.lexists(target):
            os.rename(os.path.join(src, entry), target)


def _remove_stale_saves(out_dir: str) -> None:
    """Delete the sibling folders of saves into ``out_dir`` whose writer is dead (killed mid-save).

    They may hold the caller's own entries of out_dir (a save killed between the two renames of
    its swap left out_dir without them): those go back into out_dir where it lacks them.
    """
    parent, name = os.path.split(out_dir)
    for kind in ("tmp", "old"):
        prefix = f".{name}.{kind}-"
        for path in glob.glob(os.path.join(parent, glob.escape(prefix) + "*")):
            pid = os.path.basename(path)[len(prefix):].split("-", 1)[0]
            if not os.path.isdir(path) or (pid.isdigit() and _pid_alive(int(pid))):
                continue  # not ours, or a save still running
            inner = path if kind == "tmp" else os.path.join(path, name)
            if os.path.isdir(inner) and os.path.isdir(out_dir):
                _carry_entries(inner, out_dir)
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed %s, left by an interrupted save", path)


def read_meta(index_dir: str) -> dict:
    """An index folder's meta.json alone (what it was built from), without reading the index."""
    path = os.path.join(index_dir, META_FILE)
    try:
        with open(path) as fh:
            meta = json.load(fh)
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise IndexStoreError(f"{path} is not valid index metadata: {e}") from e
    return meta


class VideoIndex:
    """A FAISS index plus the video id of every row and the metadata needed to trust it.

    ``index`` is the live faiss.Index (on GPU when built/loaded that way; a faiss.IndexShards
    over ``shards`` when sharded), ``ids[i]`` the video id of faiss row i, ``meta`` a JSON-able
    dict: format_version, run, head, dim, factory, metric, count, created, faiss_version,
    train_rows, seed, search_params (e.g. nprobe, re-applied on load), shards (sizes, when
    sharded), shard_size, tuning (what a memory budget chose and measured), extra (the
    caller's own keys). ``device`` says where it runs.
    Scores: inner product for metric "ip" (higher = better), squared L2 distance for "l2"
    (lower = better), exactly as FAISS returns them.
    """

    def __init__(self, index: faiss.Index, ids: list[str], meta: dict, device: str = "cpu",
                 shards: list[faiss.Index] | None = None, template: faiss.Index | None = None):
        self.index = index
        self.ids = ids
        self.meta = meta
        self.device = device
        self.shards = shards  # None: one index; else the parts self.index searches together
        self._template = template  # trained and empty: what a new shard starts from
        self._pos_cache: dict[str, int] | None = None
        self._wanted_device = device

    @property
    def _pos(self) -> dict[str, int]:
        """id -> row, built on first use (10M ids make a dict of about 1 GB)."""
        if self._pos_cache is None:
            self._pos_cache = {v: i for i, v in enumerate(self.ids)}
        return self._pos_cache

    # ------------------------------------------------------------------ build
    @classmethod
    def empty(
        cls,
        dim: int,
        factory: str = "Flat",
        metric: str = "ip",
        device: str = "auto",
        meta: dict | None = None,
        seed: int = 0,
        shard_size: int | None = None,
    ) -> "VideoIndex":
        """An index with no vectors yet: train it (if ``needs_training``), then add chunks.

        ``shard_size``: at most that many vectors per shard (None: one index). ``meta`` keys
        "run" and "head" go to the top level of meta.json, everything else under "extra".
        """
        if metric not in METRICS:
            raise IndexStoreError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
        if shard_size is not None and int(shard_size) < 1:
            raise IndexStoreError(f"shard size must be >= 1, got {shard_size}")
        try:
            cpu_index = faiss.index_factory(int(dim), factory, METRICS[metric])
        except RuntimeError as e:
            raise IndexStoreError(f"invalid FAISS factory string {factory!r}: {e}") from e
        extra = dict(meta or {})
        out = cls(cpu_index, [], {
            "format_version": FORMAT_VERSION,
            "run": extra.pop("run", None),
            "head": extra.pop("head", None),
            "dim": int(dim),
            "factory": factory,
            "metric": metric,
            "count": 0,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "faiss_version": faiss.__version__,
            "train_rows": 0,
            "seed": seed,
            "search_params": {},
            "extra": extra,
        })
        out._wanted_device = device
        if shard_size is not None:
            out.meta["shard_size"] = int(shard_size)
        if cpu_index.is_trained:
            out._ready()
        return out

    def empty_like(self, factory: str) -> "VideoIndex":
        """An empty index of ``factory`` with this one's dim, metric, device, meta, seed and
        shard size: the same build with another code."""
        meta = {"run": self.meta["run"], "head": self.meta["head"], **self.meta["extra"]}
        return VideoIndex.empty(int(self.meta["dim"]), factory, self.meta["metric"], self._wanted_device, meta,
                                int(self.meta["seed"]), self.meta.get("shard_size"))

    @property
    def needs_training(self) -> bool:
        return not self._trained_index().is_trained

    def _trained_index(self) -> faiss.Index:
        return self._template if self._template is not None else self.index

    def train_rows(self, n: int, train_size: int | None = None) -> int:
        """Rows to sample from ``n`` for training: ``train_size``, by default 256 per centroid
        (all FAISS's k-means would use anyway); too few for the factory is an error."""
        index, factory = self._trained_index(), self.meta["factory"]
        need = _min_train_rows(index)
        nlist = _centroids(index)
        size = min(n, train_size if train_size is not None else max(need, ROWS_PER_CENTROID * max(nlist, 1)))
        if size < need:
            given = f"train_size={train_size}" if train_size is not None and train_size < n else f"{n} embeddings"
            raise IndexStoreError(
                f"factory {factory!r} needs at least {need} training rows, got {given}; "
                f"use a smaller factory (fewer IVF lists / PQ bits) or more videos"
            )
        if nlist and size < MIN_GOOD_ROWS_PER_CENTROID * nlist:
            log.warning(
                "training %d IVF lists on %d rows (< %d per list): clustering will be poor",
                nlist, size, MIN_GOOD_ROWS_PER_CENTROID,
            )
        return int(size)

    def train(self, sample: np.ndarray) -> None:
        """Train the IVF/PQ/OPQ/PCA stages on ``sample`` (seeded k-means; on GPU when present)."""
        x = _as_matrix(sample, self.dim, "training sample")
        index, factory, seed = self._trained_index(), self.meta["factory"], int(self.meta["seed"])
        ivf = _ivf_of(index)
        if ivf is not None:
            ivf.cp.seed = seed
            if resolve_device(self._wanted_device, "train") == "gpu":  # FAISS wiki recipe: k-means on GPU
                ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(ivf.d))
        log.info("training %s on %d rows", factory, x.shape[0])
        _skip_polysemous_training(index)
        try:
            if self.meta["metric"] == "ip":
                _train_transforms_uncentred(index, x)
            index.train(x)
        except RuntimeError as e:
            raise IndexStoreError(f"training factory {factory!r} on {x.shape[0]} rows failed: {e}") from e
        if ivf is not None:
            ivf.clustering_index = None
        self.meta["train_rows"] = int(x.shape[0])
        self._ready()

    def _ready(self) -> None:
        """Trained: keep a trained empty copy when sharded, and move to the device asked."""
        if "shard_size" in self.meta:
            self._template = self.index
            self.index = faiss.IndexShards(self.dim, False, True)
            self.shards = []
            self.device = resolve_device(self._wanted_device, "build")
            return
        self.index, self.device = _to_device(self.index, self._wanted_device, "build")

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        ids: Sequence[str],
        factory: str = "Flat",
        metric: str = "ip",
        device: str = "auto",
        train_size: int | None = None,
        nprobe: int | None = None,
        meta: dict | None = None,
        seed: int = 0,
        shard_size: int | None = None,
    ) -> "VideoIndex":
        """Build, train (if the factory needs it) and fill an index from one matrix.

        Training uses ``sample_positions`` rows (seeded), as the streaming build does, so
        both give the same index.
        """
        x = _as_matrix(embeddings, None, "embeddings")
        n, d = x.shape
        ids = _check_ids(ids, n, "build")
        out = cls.empty(d, factory, metric, device, meta, seed, shard_size)
        if out.needs_training:
            out.train(x[sample_positions(n, out.train_rows(n, train_size), seed)])
        out.add(x, ids)
        if nprobe is not None:
            out.set_nprobe(nprobe)
        return out

    # ------------------------------------------------------------------ use
    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    def add(self, embeddings: np.ndarray, ids: Sequence[str]) -> None:
        """Append videos without rebuilding (IVF lists keep their trained centroids).

        Sharded: the last shard fills up to ``shard_size``, then a new shard starts from the
        trained empty copy.
        """
        x = _as_matrix(embeddings, self.dim, "embeddings to add")
        ids = _check_ids(ids, x.shape[0], "add")
        if self.needs_training:
            raise IndexStoreError(f"factory {self.meta['factory']!r} must be trained before vectors are added")
        clash = [i for i in ids if i in self._pos]
        if clash:
            raise IndexStoreError(
                f"add: {len(clash)} video id(s) already in the index, e.g. {clash[:5]}; "
                f"ids must be unique (rebuild the index to replace embeddings)"
            )
        if not x.shape[0]:
            return
        if self.shards is None:
            self.index.add(x)
        else:
            self._add_to_shards(x)
        start = len(self.ids)
        self.ids.extend(ids)
        self._pos.update((v, start + i) for i, v in enumerate(ids))
        self.meta["count"] = len(self.ids)

    def _add_to_shards(self, x: np.ndarray) -> None:
        size, done = int(self.meta["shard_size"]), 0
        while done < x.shape[0]:
            if not self.shards or self.shards[-1].ntotal >= size:
                self._new_shard()
            last = self.shards[-1]
            take = min(x.shape[0] - done, size - int(last.ntotal))
            last.add(x[done:done + take])
            done += take
        self.index.syncWithSubIndexes()
        self.meta["shards"] = [int(sh.ntotal) for sh in self.shards]

    def _new_shard(self) -> None:
        shard = faiss.clone_index(self._template)
        if self.device == "gpu":
            shard, _ = _to_device(shard, "gpu", "shard", gpu=len(self.shards) % faiss.get_num_gpus())
        for name, value in dict(self.meta.get("search_params") or {}).items():
            _set_param(shard, self.device, name, value)
        self.shards.append(shard)
        self.index.add_shard(shard)

    def search_positions(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k as FAISS gives it: scores [Q, k] float32 and row positions [Q, k] int64.

        Position -1 marks a missing hit (k > ntotal, or an IVF probe that found fewer than k).
        """
        if int(k) < 1:
            raise IndexStoreError(f"k must be >= 1, got {k}")
        q = _as_matrix(queries, self.dim, "queries")
        scores, pos = self.index.search(q, int(k))
        return scores, pos

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Top-k video ids per query; ``ids[q]`` lists only real hits (see search_positions)."""
        scores, pos = self.search_positions(queries, k)
        ids = self.ids
        return scores, [[ids[p] for p in row if p >= 0] for row in pos.tolist()]

    def position(self, video_id: str) -> int:
        try:
            return self._pos[video_id]
        except KeyError:
            raise IndexStoreError(f"video id {video_id!r} is not in the index") from None

    def set_search_param(self, name: str, value: float) -> None:
        """Set a FAISS search-time parameter (nprobe for IVF, efSearch for HNSW, ...)."""
        try:
            for part in ([self.index] if self.shards is None else [self._template, *self.shards]):
                _set_param(part, self.device, name, value)
        except RuntimeError as e:
            raise IndexStoreError(
                f"factory {self.meta.get('factory')!r} has no search parameter {name!r}"
            ) from e
        self.meta.setdefault("search_params", {})[name] = value

    def set_nprobe(self, nprobe: int) -> None:
        """How many IVF lists a query visits: the recall/speed knob of IVF indexes."""
        if int(nprobe) < 1:
            raise IndexStoreError(f"nprobe must be >= 1, got {nprobe}")
        self.set_search_param("nprobe", int(nprobe))

    def cpu_index(self) -> faiss.Index:
        """The CPU copy of a single index (sharded: see cpu_shards)."""
        if self.shards is not None:
            raise IndexStoreError("a sharded index has no single FAISS index; use cpu_shards()")
        return faiss.index_gpu_to_cpu(self.index) if self.device == "gpu" else self.index

    def cpu_shards(self) -> list[faiss.Index]:
        """CPU copies of the parts, in row order (one part when not sharded)."""
        if self.shards is None:
            return [self.cpu_index()]
        return [faiss.index_gpu_to_cpu(p) if self.device == "gpu" else p for p in self.shards]

    def reconstruct_all(self) -> np.ndarray | None:
        """All stored vectors [ntotal, dim] (lossy for PQ/SQ codes), or None if unsupported.

        For IVF indexes this builds FAISS's direct map (one int64 per vector) once.
        """
        parts = []
        for idx in self.cpu_shards():
            try:
                ivf = _ivf_of(idx)
                if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
                    ivf.make_direct_map()
                parts.append(idx.reconstruct_n(0, idx.ntotal) if idx.ntotal else np.zeros((0, idx.d), np.float32))
            except RuntimeError as e:
                log.info("index %s cannot reconstruct vectors: %s", self.meta.get("factory"), e)
                return None
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

    # ------------------------------------------------------------------ storage
    def save(self, out_dir: str) -> None:
        """Write index.faiss (and index-NNN.faiss when sharded), ids.parquet, meta.json into
        out_dir, replacing it atomically.

        Files go to a hidden sibling folder first, which then takes out_dir's place by two
        renames; anything else the caller keeps in out_dir is carried over. The sibling
        folders a killed save left (their names carry the writer's pid) are removed once this
        save is in place.
        """
        out_dir = os.path.abspath(out_dir)
        parent, name = os.path.split(out_dir)
        if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
            raise IndexStoreError(f"{out_dir} exists and is not a folder")
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-{os.getpid()}-", dir=parent)
        old = None
        try:
            as_umask_allows(tmp)  # mkdtemp made it 0700: the index folder it becomes must not be
            # sharded: index.faiss is the trained empty index the shards (and new ones) start from
            parts = [(INDEX_FILE, self._template if self.shards is not None else self.cpu_index())]
            parts += [(SHARD_FILE.format(i), part) for i, part in enumerate(self.cpu_shards() if self.shards is not None else [])]
            for file_name, part in parts:
                idx_path = os.path.join(tmp, file_name)
                faiss.write_index(part, idx_path)
                _fsync_file(idx_path)
            ids_path = os.path.join(tmp, IDS_FILE)
            pq.write_table(pa.table({ID_COLUMN: pa.array(self.ids, pa.string())}), ids_path)
            _fsync_file(ids_path)
            self.meta["count"] = len(self.ids)
            meta_path = os.path.join(tmp, META_FILE)
            with open(meta_path, "w") as f:
                json.dump(self.meta, f, indent=2, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            if os.path.isdir(out_dir):
                _link_entries(out_dir, tmp)  # linked, not moved: a kill before the swap loses nothing
                old = tempfile.mkdtemp(prefix=f".{name}.old-{os.getpid()}-", dir=parent)
                os.rename(out_dir, os.path.join(old, name))
            os.rename(tmp, out_dir)
        except BaseException:
            if old is not None and not os.path.lexists(out_dir):
                os.rename(os.path.join(old, name), out_dir)  # undo the first rename of the swap
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        _remove_stale_saves(out_dir)
        log.info("saved %d vectors (%s) to %s", len(self.ids), self.meta.get("factory"), out_dir)

    @classmethod
    def load(cls, index_dir: str, device: str = "cpu") -> "VideoIndex":
        """Read an index folder, checking that its three files agree with each other."""
        index_dir = os.path.abspath(index_dir)
        if not os.path.isdir(index_dir):
            parent, name = os.path.split(index_dir)
            leftover = glob.glob(os.path.join(parent, f".{name}.old-*", name))
            hint = (
                f"; an interrupted save left the previous index at {leftover[0]} (move it back)"
                if leftover else ""
            )
            raise IndexStoreError(f"index folder {index_dir} does not exist{hint}")
        paths = {f: os.path.join(index_dir, f) for f in (INDEX_FILE, IDS_FILE, META_FILE)}
        for f, p in paths.items():
            if not os.path.isfile(p):
                raise IndexStoreError(f"index folder {index_dir} has no {f}")
        meta = read_meta(index_dir)
        cpu_index = _read_index(paths[INDEX_FILE])
        shards = None
        if meta.get("shards") is not None:
            sizes = meta["shards"]
            shards = [_read_index(os.path.join(index_dir, SHARD_FILE.format(i))) for i in range(len(sizes))]
            for i, (part, size) in enumerate(zip(shards, sizes)):
                if part.ntotal != size or part.d != cpu_index.d:
                    raise IndexStoreError(
                        f"{index_dir}: {SHARD_FILE.format(i)} holds {part.ntotal} {part.d}-d vectors, "
                        f"{META_FILE} says {size} of dim {cpu_index.d}")
            cpu_index.ntotal = sum(int(p.ntotal) for p in shards)  # the check below: every row
        try:
            table = pq.ParquetFile(paths[IDS_FILE]).read()  # one file: no dataset layer to import
        except (OSError, pa.ArrowException) as e:
            raise IndexStoreError(f"{paths[IDS_FILE]} is not a readable parquet file: {e}") from e
        if ID_COLUMN not in table.column_names:
            raise IndexStoreError(
                f"{paths[IDS_FILE]} has no column {ID_COLUMN!r} (columns: {table.column_names})"
            )
        ids = [str(v) for v in table.column(ID_COLUMN).to_pylist()]
        if len(ids) != cpu_index.ntotal:
            raise IndexStoreError(
                f"{index_dir}: {IDS_FILE} has {len(ids)} ids but {INDEX_FILE} holds "
                f"{cpu_index.ntotal} vectors"
            )
        if len(set(ids)) != len(ids):
            raise IndexStoreError(f"{paths[IDS_FILE]} contains duplicate video ids")
        if meta.get("dim") != cpu_index.d:
            raise IndexStoreError(
                f"{index_dir}: {META_FILE} says dim {meta.get('dim')} but {INDEX_FILE} has dim "
                f"{cpu_index.d}"
            )
        if meta.get("count") != cpu_index.ntotal:
            raise IndexStoreError(
                f"{index_dir}: {META_FILE} says count {meta.get('count')} but {INDEX_FILE} holds "
                f"{cpu_index.ntotal} vectors"
            )
        metric = meta.get("metric")
        if metric not in METRICS or METRICS[metric] != cpu_index.metric_type:
            raise IndexStoreError(
                f"{index_dir}: {META_FILE} metric {metric!r} does not match the FAISS index"
            )
        if shards is None:
            index, used = _to_device(cpu_index, device, f"load {index_dir}")
            out = cls(index, ids, meta, device=used)
        else:
            cpu_index.ntotal = 0
            out = cls(cpu_index, ids, meta)
            out._wanted_device = device
            out._ready()  # an empty IndexShards on the device asked
            for part in shards:
                if out.device == "gpu":
                    part, _ = _to_device(part, "gpu", f"load {index_dir}", gpu=len(out.shards) % faiss.get_num_gpus())
                out.shards.append(part)
                out.index.add_shard(part)
            out.index.syncWithSubIndexes()
        for name, value in dict(meta.get("search_params") or {}).items():
            out.set_search_param(name, value)
        return out
