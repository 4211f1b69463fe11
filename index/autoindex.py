"""An index chosen from a memory budget, and its search parameters tuned against exact search.

In the spirit of autofaiss (which built billion-vector CLIP indexes on one machine this way):
the factory is the most faithful one whose estimated size fits the budget, and nprobe /
efSearch is the smallest value whose recall@k against exact search on a held-out sample
reaches the target. autofaiss itself is not used: its releases pin numpy<2, which this
project's stack (numpy 2, faiss 1.15) cannot go back to.

The choice (:func:`candidate_factories`), most faithful first:

* ``Flat`` up to 10k vectors (exact; a query costs n*d flops, well under a millisecond);
* ``HNSW32`` / ``HNSW16`` up to 200k vectors: the fastest CPU search at high recall, but its
  build grows as n log n graph searches, too slow on a small CPU beyond that;
* then IVF with ``nlist`` = the power of two nearest 4*sqrt(n) (FAISS's guideline, at least
  39 training rows per list), its coarse quantizer an HNSW graph from 4096 lists on (cheap
  assignment of every added vector), and the codes in order of bytes per vector: Flat, SQ8
  (1 byte per dim), PQ (m bytes). Above 1024 dims, vectors are first reduced by PCA (to 1024,
  512, 256 ... dims; PCAR, PCA plus a rotation, in front of PQ so that its sub-vectors carry
  equal variance): assignment, training and scans all cost d per vector, and a PCA is one
  matrix product per chunk.

Codes of the same size are rivals: 256 bytes per vector are PQ256 over 1024 or 512 dims, or
SQ8 over 256. Which keeps the neighbours best depends on the data's spectrum (few strong
directions favour SQ8 over fewer dims, a flat one PQ over more), so the order alone does not
decide: :func:`trial_codes` builds each rival at the scale of the training sample and keeps the
one with the best recall@10 on held-out sample rows, near-ties going to the ladder's order (on
the benchmarks' clustered 10M x 4096 under 4 GB: PQ256 over 1024 dims 0.891, over 512 0.962,
SQ8 over 256 0.986, Flat over 64 0.991; the ladder's first is the worst of the four).
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass

import numpy as np

from index.faiss_index import METRICS, IndexStoreError, VideoIndex, _min_train_rows

log = logging.getLogger(__name__)

FLAT_MAX = 10_000
HNSW_MAX = 200_000
HNSW_QUANTIZER_FROM = 4096  # lists: from here the coarse quantizer is an HNSW graph
MIN_ROWS_PER_LIST = 39
PCA_ABOVE = 1024
PQ_SIZES = (256, 128, 64, 32, 16, 8)
SLACK = 1.02  # estimates are within a few per cent of the written file (headers, HNSW levels)

_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_memory(text: str) -> int:
    """'4G', '512M', '1.5GB', '1000000' -> bytes (binary units, as autofaiss and free -g)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*", str(text).upper())
    if not m:
        raise IndexStoreError(f"memory budget {text!r} is not a size like 4G, 512M or 1.5GB")
    value = float(m.group(1)) * _UNITS[m.group(2)]
    if value < 1:
        raise IndexStoreError(f"memory budget {text!r} must be positive")
    return int(value)


def format_bytes(n: float) -> str:
    for unit in ("T", "G", "M", "K"):
        if n >= _UNITS[unit]:
            return f"{n / _UNITS[unit]:.2f}{unit}"
    return f"{int(n)}B"


@dataclass(frozen=True)
class Candidate:
    factory: str
    bytes: int  # estimated size of the written index for n vectors
    code: int = 0  # bytes per vector of its codes (IVF factories; 0 for Flat and HNSW)


def _nlist(n: int) -> int:
    nlist = 2 ** round(math.log2(max(4 * math.sqrt(max(n, 1)), 1)))
    while nlist > 1 and n < MIN_ROWS_PER_LIST * nlist:
        nlist //= 2
    return int(min(nlist, 65536))


def _ivf_bytes(n: int, d: int, y: int, nlist: int, code: int, transform: int) -> int:
    quantizer = nlist * 4 * y + (nlist * (8 * 32 + 16) if nlist >= HNSW_QUANTIZER_FROM else 0)
    return n * (code + 8) + quantizer + transform  # 8: the int64 id FAISS stores per vector


def candidate_factories(n: int, d: int) -> list[Candidate]:
    """Index factories for n vectors of dim d, most faithful first, with estimated bytes."""
    out: list[Candidate] = []
    if n <= FLAT_MAX:
        out.append(Candidate("Flat", n * d * 4))
    if n <= HNSW_MAX:
        out += [Candidate(f"HNSW{m}", n * (4 * d + 8 * m + 24)) for m in (32, 16)]
    nlist = _nlist(n)
    if n < 256 or nlist < 2:  # PQ/SQ and IVF need rows to train on
        return out
    coarse = f"IVF{nlist}_HNSW32" if nlist >= HNSW_QUANTIZER_FROM else f"IVF{nlist}"
    dims = [d] if d <= PCA_ABOVE else []
    dims += [y for y in (1024, 512, 256, 128, 64, 32) if y < d and y <= PCA_ABOVE]
    ladder = []
    for y in dims:
        pca = 4 * (d * d + y * d + 2 * d) if y < d else 0  # PCAMatrix keeps the full d*d basis
        prefix = f"PCA{y}," if y < d else ""
        ladder.append((4 * y, y, f"{prefix}{coarse},Flat", _ivf_bytes(n, d, y, nlist, 4 * y, pca)))
        ladder.append((y, y, f"{prefix}{coarse},SQ8", _ivf_bytes(n, d, y, nlist, y, pca + 8 * y)))
    for m in PQ_SIZES:
        widest = min(d, 4 * m) if d > PCA_ABOVE or d > 4 * m else d  # 4 dims per sub-quantizer
        for y in (widest, 2 * m) if 2 * m < widest else (widest,):  # and its rival of 2 per sub-quantizer
            if m >= y or y % m:
                continue
            pca = 4 * (d * d + y * d + 2 * d) if y < d else 0
            prefix = f"PCAR{y}," if y < d else ""
            ladder.append((m, y, f"{prefix}{coarse},PQ{m}", _ivf_bytes(n, d, y, nlist, m, pca + 256 * 4 * y)))
    ladder.sort(key=lambda c: (-c[0], -c[1]))
    seen = {c.factory for c in out}
    for code, _, factory, size in ladder:
        if factory not in seen:
            seen.add(factory)
            out.append(Candidate(factory, int(size * SLACK), code))
    return out


def choose_factory(n: int, d: int, budget: int) -> Candidate:
    """The first candidate that fits ``budget`` bytes; none fitting is an error naming the
    smallest budget that would."""
    cands = candidate_factories(n, d)
    for cand in cands:
        if cand.bytes <= budget:
            return cand
    smallest = min(cands, key=lambda c: c.bytes)
    raise IndexStoreError(
        f"a memory budget of {format_bytes(budget)} fits no index of {n} vectors of dim {d}: the smallest, "
        f"{smallest.factory}, needs {format_bytes(smallest.bytes)}; use --max-index-memory "
        f"{format_bytes(smallest.bytes * 1.01)} or more"
    )


def code_rivals(n: int, d: int, budget: int) -> list[Candidate]:
    """choose_factory's pick, then the other candidates with its bytes per vector that fit."""
    first = choose_factory(n, d, budget)
    if not first.code:
        return [first]
    return [first] + [c for c in candidate_factories(n, d)
                      if c.code == first.code and c.bytes <= budget and c.factory != first.factory]


class ExactTopK:
    """Exact top-k of a few queries over vectors seen chunk by chunk (the tuning's truth).

    Each chunk is searched with faiss.knn and merged into a faiss.ResultHeap, so nothing but
    the [nq, k] results stays between chunks.
    """

    def __init__(self, queries: np.ndarray, k: int, metric: str = "ip"):
        import faiss

        self.q = np.ascontiguousarray(queries, dtype=np.float32)
        self.k, self.metric = int(k), METRICS[metric]
        self.heap = faiss.ResultHeap(self.q.shape[0], self.k, keep_max=metric == "ip")
        self.seen = 0

    def add(self, chunk: np.ndarray) -> None:
        import faiss

        x = np.ascontiguousarray(chunk, dtype=np.float32)
        if not x.shape[0]:
            return
        k = min(self.k, x.shape[0])
        dist, pos = faiss.knn(self.q, x, k, metric=self.metric)
        if k < self.k:  # pad: ResultHeap takes [nq, k] blocks
            pad = np.full((dist.shape[0], self.k - k), -np.inf if self.metric == METRICS["ip"] else np.inf, np.float32)
            dist, pos = np.hstack([dist, pad]), np.hstack([pos, np.full(pad.shape, -1, np.int64)])
        self.heap.add_result(dist, np.where(pos >= 0, pos + self.seen, -1))
        self.seen += x.shape[0]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        self.heap.finalize()
        return self.heap.D, self.heap.I


def knn_recall(found: np.ndarray, exact: np.ndarray, k: int, own: np.ndarray | None = None) -> float:
    """Mean |found top-k ∩ exact top-k| / k; ``own[q]`` (a query's own row) is left out of both."""
    total = 0
    for q in range(found.shape[0]):
        f, e = found[q], exact[q]
        if own is not None:
            f, e = f[f != own[q]], e[e != own[q]]
        total += len(set(f[:k].tolist()) & set(e[:k].tolist()) - {-1})
    return total / (k * max(found.shape[0], 1))


def _search_param(index: VideoIndex) -> tuple[str, list[int]] | None:
    factory = index.meta["factory"]
    if "IVF" in factory:
        nlist = int(re.search(r"IVF(\d+)", factory).group(1))
        return "nprobe", [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if p <= nlist]
    if factory.startswith("HNSW"):
        return "efSearch", [16, 32, 64, 128, 256, 512, 1024, 2048]
    return None  # Flat, and factories this module does not choose: nothing to tune


PLATEAU = 0.01  # target out of reach: keep the smallest nprobe / efSearch within this recall of the best


def tune_search(index: VideoIndex, queries: np.ndarray, exact: np.ndarray, k: int = 10,
                target: float = 0.95, own: np.ndarray | None = None) -> dict:
    """Set the smallest nprobe / efSearch whose recall@k reaches ``target``; returns what was
    measured (every value tried, the one kept, its recall and queries/s).

    ``exact``: exact top positions [nq, >= k(+1)] of ``queries``; ``own``: each query's own
    row when the queries are indexed vectors (left out, so the recall is that of the
    neighbours, not of the query finding itself). When no value reaches the target, something
    else caps the recall (the codes, the lists), and more probes buy little of it for much time
    (10M x 512 with PQ256: 0.915 at nprobe 128, 0.923 at 1024 for an eighth of the queries/s):
    the smallest value within ``PLATEAU`` of the best recall measured is kept, with a warning.
    """
    depth = k + (own is not None)
    knob = _search_param(index)
    tried = []
    values = knob[1] if knob else [None]
    for value in values:
        if value is not None:
            index.set_search_param(knob[0], value)
            if "_HNSW" in index.meta["factory"]:  # the coarse HNSW must find at least nprobe lists
                index.set_search_param("quantizer_efSearch", max(64, 2 * value))
        start = time.perf_counter()
        _, found = index.search_positions(queries, depth)
        seconds = time.perf_counter() - start
        recall = knn_recall(found, exact, k, own)
        tried.append({"value": value, "recall": round(recall, 4),
                      "queries_per_s": round(queries.shape[0] / max(seconds, 1e-9), 1)})
        if recall >= target:
            break
    best = tried[-1]
    if best["recall"] < target:
        top = max(tried, key=lambda t: t["recall"])
        best = next(t for t in tried if t["recall"] >= top["recall"] - PLATEAU)
        log.warning("no %s reached recall@%d %.2f (best %.3f at %s); keeping %s (recall %.3f, %.0f queries/s), "
                    "the smallest within %.2f of the best", knob and knob[0], k, target, top["recall"], top["value"],
                    best["value"], best["recall"], best["queries_per_s"], PLATEAU)
    if knob:
        index.set_search_param(knob[0], best["value"])
        if "_HNSW" in index.meta["factory"]:
            index.set_search_param("quantizer_efSearch", max(64, 2 * best["value"]))
    result = {"k": k, "target_recall": target, "queries": int(queries.shape[0]), "param": knob and knob[0],
              "value": best["value"], "recall": best["recall"], "queries_per_s": best["queries_per_s"],
              "tried": tried}
    index.meta["tuning"] = {**index.meta.get("tuning", {}), **result}
    return result


KMEANS_ITERS = 10  # FAISS's default is 25; past 10 the IVF lists barely move on a sample this size
TRAIN_BYTES = 1 << 30  # a training sample never takes more than this much memory


def budget_index(n: int, d: int, budget: int, metric: str = "ip", device: str = "auto", meta: dict | None = None,
                 seed: int = 0, shard_size: int | None = None) -> VideoIndex:
    """An empty index of the factory ``budget`` bytes allow for n vectors of dim d (before the
    trial of its equal-size rivals, :func:`best_code`, which needs the training sample)."""
    choice = choose_factory(n, d, budget)
    log.info("budget %s for %d x %d: %s (about %s)", format_bytes(budget), n, d, choice.factory,
             format_bytes(choice.bytes))
    return _budgeted(VideoIndex.empty(d, choice.factory, metric, device, meta, seed, shard_size), choice, budget)


def _budgeted(index: VideoIndex, choice: Candidate, budget: int) -> VideoIndex:
    import faiss

    try:
        faiss.extract_index_ivf(index._trained_index()).cp.niter = KMEANS_ITERS
    except (RuntimeError, TypeError):
        pass
    index.meta["tuning"] = {"max_index_memory": budget, "estimated_bytes": choice.bytes}
    return index


def best_code(index: VideoIndex, n: int, sample: np.ndarray) -> VideoIndex:
    """``index`` (empty, from budget_index) or, when an equal-size rival's codes kept more of
    the sample's neighbours in :func:`trial_codes`, an empty index of that rival; the trial is
    recorded in meta as tuning.code_trial."""
    budget = index.meta["tuning"]["max_index_memory"]
    rivals = code_rivals(n, index.dim, budget)
    if len(rivals) < 2:
        return index
    winner, trials = trial_codes(rivals, sample, index.meta["metric"], int(index.meta["seed"]))
    if winner.factory != index.meta["factory"]:
        index = _budgeted(index.empty_like(winner.factory), winner, budget)
    index.meta["tuning"]["code_trial"] = trials
    return index


TRIAL_BASE = 16_384  # held-out sample rows each rival encodes and searches
TRIAL_TRAIN = 16_384  # sample rows each rival trains on, at most (64 per PQ centroid)
TRIAL_QUERIES = 500
TRIAL_TIE = 0.005  # about twice the standard error of a recall@10 near 0.98 over 500 queries


def _kept_dims(factory: str, d: int) -> int:
    m = re.match(r"PCAR?(\d+),", factory)
    return int(m.group(1)) if m else d


def trial_codes(rivals: list[Candidate], sample: np.ndarray, metric: str = "ip", seed: int = 0,
                k: int = 10) -> tuple[Candidate, list[dict]]:
    """The rival whose codes keep the most of the sample's neighbours, and what each measured.

    Each rival is built at the scale of the sample: trained on up to TRIAL_TRAIN sample rows, it
    encodes TRIAL_BASE others into plain IVF lists as many as that many rows would get, and all
    its lists are searched, so that only its codes limit the recall@k of TRIAL_QUERIES of those
    rows (each one's own row left out) against exact search over the full-dim rows. The PCA the
    rivals share (top directions of one sample) is trained once, to the widest rival's dims,
    and each rival's own code then works on those reduced rows: at 4096 dims that PCA is most of
    the trial's time (about 100 s on 2 cores), each rival a few seconds to a minute.
    """
    import faiss

    x = np.ascontiguousarray(sample, dtype=np.float32)
    rng = np.random.default_rng(seed + 2)
    order = rng.permutation(x.shape[0])
    n_base = min(TRIAL_BASE, x.shape[0] // 2)
    base, train = x[np.sort(order[:n_base])], x[np.sort(order[n_base:n_base + TRIAL_TRAIN])]
    own = np.sort(rng.choice(n_base, min(TRIAL_QUERIES, n_base), replace=False))
    _, exact = faiss.knn(base[own], base, k + 1, metric=METRICS[metric])
    d, widest = x.shape[1], max(_kept_dims(c.factory, x.shape[1]) for c in rivals)
    log.info("trying %d codes of %d bytes per vector on %d held-out sample rows: %s", len(rivals), rivals[0].code,
             n_base, ", ".join(c.factory for c in rivals))
    if widest < d:
        reducer = VideoIndex.empty(d, f"PCA{widest},Flat", metric, "cpu", seed=seed)
        reducer.train(train)
        pca = faiss.downcast_VectorTransform(reducer.index.chain.at(0))
        base, train = pca.apply(base), pca.apply(train)
    nlist, ids = _nlist(n_base), [str(i) for i in range(n_base)]
    trials = []
    for cand in rivals:
        start = time.perf_counter()
        index = VideoIndex.empty(base.shape[1], re.sub(r"IVF\d+(_HNSW\d+)?", f"IVF{nlist}", cand.factory), metric,
                                 "cpu", seed=seed)
        if _min_train_rows(index._trained_index()) > train.shape[0]:
            log.info("  %s: left out, %d rows are too few to train it", cand.factory, train.shape[0])
            continue
        index.train(train)
        index.add(base, ids)
        index.set_search_param("nprobe", nlist)
        recall = knn_recall(index.search_positions(base[own], k + 1)[1], exact, k, own)
        trials.append({"factory": cand.factory, "recall": round(recall, 4),
                       "seconds": round(time.perf_counter() - start, 1)})
        log.info("  %s: recall@%d %.3f", cand.factory, k, recall)
    if len(trials) < 2:  # nothing to compare: the ladder's order stands
        return rivals[0], trials
    top = max(t["recall"] for t in trials)
    best = next(t for t in trials if t["recall"] >= top - TRIAL_TIE)  # near-ties: the ladder's order
    log.info("kept %s (recall@%d %.3f; best %.3f, near-ties go to the ladder's first)", best["factory"], k,
             best["recall"], top)
    return next(c for c in rivals if c.factory == best["factory"]), trials


def auto_train_rows(index: VideoIndex, n: int) -> int:
    """Training rows for a chosen index: 64 per IVF list (FAISS's k-means wants 39 to 256),
    at most TRAIN_BYTES of vectors, never fewer than the factory needs."""
    from index.faiss_index import _centroids

    nlist = max(_centroids(index._trained_index()), 1)
    cap = max(TRAIN_BYTES // (4 * index.dim), _min_train_rows(index._trained_index()))
    return index.train_rows(n, min(n, 64 * nlist, cap))
