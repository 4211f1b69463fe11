"""Retrieval metrics (DESIGN §6) with explicit tie handling and bounded memory.

Ranks never depend on sort order. For one relevant item with score s:

* optimistic rank  = 1 + #candidates scored strictly higher than s
* pessimistic rank = 1 + #candidates scored higher or equal (other than itself)
* average          = mean of the two

When a query has several relevant items (video→text: all captions of the video), ties
between two relevant items of the same query cost neither of them anything; only
irrelevant candidates tied with a relevant item are put before it (pessimistic) or after
it (optimistic). R@K, MedR, MeanR and mIR use the best-ranked relevant item. AP uses the
ranking in which relevant items win (optimistic) or lose (pessimistic) every tie with
irrelevant ones: the i-th best relevant item sits at position p_i = i + #irrelevant
candidates above it, and AP = mean_i(i / p_i); "average" uses the mean of the two p_i.
For untied scores all three modes agree and p_i is the item's ordinary rank.

``official`` is the compatibility mode for comparing with published tables: it reports what
the official LAFF evaluation does. Candidates are put in the order of a stable ascending sort
of the scores, reversed (``np.argsort(s, kind="stable")[::-1]``), so among equal scores the
candidate with the larger index comes first, relevant or not; an item's rank is its position
in that order, AP = mean_i(i / p_i) over those positions, and MedR is the floor of the median
rank. Its figures depend on candidate order where scores tie: it is never the default.

Scores may come as a full [N, M] matrix or as (row_offset, chunk) pieces, so a
100k × 100k evaluation never holds the matrix: each chunk is reduced to per-query counts
and dropped. NaN scores of candidates never count as higher; a NaN score of a relevant
item is an error.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Iterator, Sequence, Union

import numpy as np

log = logging.getLogger(__name__)

TIES = ("optimistic", "pessimistic", "average", "official")
TIE_SAFE = ("optimistic", "pessimistic", "average")
OFFICIAL = "official"  # the official LAFF evaluation: ties by sort order, MedR floored
DEFAULT_KS = (1, 5, 10)
# Bound on the elements of one boolean comparison temporary (16 Mi -> 16 MiB).
_BLOCK_ELEMS = 1 << 24

ScoreChunks = Iterable[tuple[int, np.ndarray]]
RowProvider = Callable[[int, int], np.ndarray]


# ---------------------------------------------------------------- targets
def _pad_targets(query_targets, n_candidates: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Relevant indices as a padded [N, R] int64 array and its validity mask."""
    if isinstance(query_targets, np.ndarray) and query_targets.dtype != object:
        t = query_targets
        if t.ndim == 1:
            t = t[:, None]
        if t.ndim != 2:
            raise ValueError(f"targets must be [N] or [N, R], got shape {query_targets.shape}")
        if t.size and not np.issubdtype(t.dtype, np.integer):
            raise ValueError(f"targets must be integer candidate indices, got {t.dtype}")
        idx = t.astype(np.int64, copy=False)
        mask = np.ones(idx.shape, bool)
    else:
        rows = [np.asarray(r, dtype=np.int64).reshape(-1) for r in query_targets]
        width = max((len(r) for r in rows), default=1)
        idx = np.zeros((len(rows), max(width, 1)), np.int64)
        mask = np.zeros(idx.shape, bool)
        for i, r in enumerate(rows):
            idx[i, : len(r)] = r
            mask[i, : len(r)] = True
    counts = mask.sum(1)
    if (counts == 0).any():
        raise ValueError(f"query {int(np.argmin(counts))} has no relevant candidate")
    if n_candidates is not None and idx[mask].size:
        bad = mask & ((idx < 0) | (idx >= n_candidates))
        if bad.any():
            q = int(np.nonzero(bad.any(1))[0][0])
            raise ValueError(f"query {q}: relevant index out of range [0, {n_candidates})")
    if idx.shape[1] > 1:
        filled = np.where(mask, idx, -1 - np.arange(idx.shape[1]))
        s = np.sort(filled, axis=1)
        dup = (s[:, 1:] == s[:, :-1]).any(1)
        if dup.any():
            raise ValueError(f"query {int(np.nonzero(dup)[0][0])} lists a relevant index twice")
    return idx, mask


def _check_ties(ties: str) -> None:
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")


# ---------------------------------------------------------------- core counting
def _above(blk: np.ndarray, t: np.ndarray, cand: np.ndarray | None, item: np.ndarray | None) -> np.ndarray:
    """Where a candidate comes before the item scored ``t``: strictly higher, or (official order,
    ``cand``/``item`` indices given) tied with a larger candidate index."""
    if cand is None:
        return blk > t
    return (blk > t) | ((blk == t) & (cand > item))


def _row_counts(chunk: np.ndarray, idx: np.ndarray, mask: np.ndarray, need_gt: bool, need_ge: bool,
                official: bool = False):
    """Per relevant item: its score S, #candidates > S and #candidates >= S (all candidates).

    ``official``: the first count is of the candidates before the item in the official order
    (higher, or tied with a larger index). Scores of relevant items are read from the chunk
    itself, so an item never outranks itself whatever the floating-point history of the values.
    """
    chunk = np.asarray(chunk)
    n, m = chunk.shape
    r_max = idx.shape[1]
    S = np.take_along_axis(chunk, idx, axis=1)
    if not np.isfinite(S[mask]).all():
        q = int(np.nonzero((~np.isfinite(S) & mask).any(1))[0][0])
        raise ValueError(f"query row {q} of this chunk: a relevant item has a non-finite score")
    gt = np.zeros((n, r_max), np.int64) if need_gt else None
    ge = np.zeros((n, r_max), np.int64) if need_ge else None
    cand = np.arange(m)[None, :] if official else None
    block = max(1, _BLOCK_ELEMS // max(m, 1))
    for b0 in range(0, n, block):
        b1 = min(n, b0 + block)
        blk = chunk[b0:b1]
        for r in range(r_max):
            if not mask[b0:b1, r].any():
                continue
            t = S[b0:b1, r : r + 1]
            if need_gt:
                item = idx[b0:b1, r : r + 1] if official else None
                gt[b0:b1, r] = np.count_nonzero(_above(blk, t, cand, item), axis=1)
            if need_ge:
                ge[b0:b1, r] = np.count_nonzero(blk >= t, axis=1)
    return S, gt, ge


def _relevant_counts(S: np.ndarray, mask: np.ndarray, idx: np.ndarray | None = None):
    """#relevant items of the same query scored > and >= each relevant item (self included in >=).

    With ``idx`` (official order) the first count is of the relevant items before each one.
    """
    a = np.where(mask, S, -np.inf)[:, None, :]  # [n, 1, R] other items
    s = S[:, :, None]  # [n, R, 1] this item
    valid = mask[:, None, :]
    before = _above(a, s, idx[:, None, :], idx[:, :, None]) if idx is not None else a > s
    return (before & valid).sum(2), ((a >= s) & valid).sum(2)


def _positions(S: np.ndarray, mask: np.ndarray, irr_gt, irr_ge, ties: str, idx: np.ndarray | None = None):
    """Best-item rank [n] and AP [n] from the #irrelevant candidates above each item.

    ``official``: ``irr_gt`` counts the irrelevant candidates before each item in the official
    order, and relevant items are ordered as there (ties: larger ``idx`` first).
    """
    if ties == OFFICIAL:
        order = np.lexsort((np.where(mask, -idx, 0), np.where(mask, -S, np.inf)), axis=1)
    else:
        order = np.argsort(np.where(mask, -S, np.inf), axis=1, kind="stable")
    m_s = np.take_along_axis(mask, order, axis=1)
    i = np.cumsum(m_s, axis=1).astype(np.float64)  # 1-based order among relevant
    pos = []
    if ties in ("optimistic", "average", OFFICIAL):
        pos.append(np.take_along_axis(irr_gt, order, axis=1) + i)
    if ties in ("pessimistic", "average"):
        pos.append(np.take_along_axis(irr_ge, order, axis=1) + i)
    p = pos[0] if len(pos) == 1 else 0.5 * (pos[0] + pos[1])
    # i / p only where an item is relevant: elsewhere p can be 0 (nothing above, nothing relevant yet)
    ap = np.divide(i, p, out=np.zeros(p.shape), where=m_s).sum(1) / m_s.sum(1)
    return p[:, 0], ap


def _needs(ties: str) -> tuple[bool, bool]:
    """Which counts a tie mode reads: (strictly higher / before in the official order, higher or equal)."""
    return ties in ("optimistic", "average", OFFICIAL), ties in ("pessimistic", "average")


def _chunk_stats(chunk, idx, mask, ties):
    need_gt, need_ge = _needs(ties)
    official = ties == OFFICIAL
    S, gt, ge = _row_counts(chunk, idx, mask, need_gt, need_ge, official)
    rel_gt, rel_ge = _relevant_counts(S, mask, idx if official else None)
    irr_gt = gt - rel_gt if need_gt else None
    irr_ge = ge - rel_ge if need_ge else None
    return _positions(S, mask, irr_gt, irr_ge, ties, idx)


def ranks_from_scores(
    scores: np.ndarray,
    targets: Sequence[np.ndarray] | np.ndarray,
    ties: str = "optimistic",
):
    """Rank of every relevant item; never depends on sort order.

    optimistic: 1 + #candidates scored STRICTLY higher; pessimistic: additionally counts
    the irrelevant candidates tied with it (other relevant items of the same query never
    count against it when tied); average: the mean of the two; official: the position in the
    official LAFF evaluation's order (ties: the larger candidate index first).
    ``targets``: [N] ints (one relevant per row) -> ranks [N]; [N, R] ints -> [N, R];
    a ragged sequence of index arrays -> a list of rank arrays in the same order.
    int64 ranks, float64 for "average".
    """
    _check_ties(ties)
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [N, M], got shape {scores.shape}")
    idx, mask = _pad_targets(targets, scores.shape[1])
    if idx.shape[0] != scores.shape[0]:
        raise ValueError(f"{scores.shape[0]} score rows but targets for {idx.shape[0]} queries")
    official = ties == OFFICIAL
    S, gt, ge = _row_counts(scores, idx, mask, True, ties in ("pessimistic", "average"), official)
    rel_gt, rel_ge = _relevant_counts(S, mask)
    opt = 1 + gt
    if ties in ("optimistic", OFFICIAL):
        ranks = opt
    else:
        pess = 1 + (ge - rel_ge) + rel_gt
        ranks = pess if ties == "pessimistic" else 0.5 * (opt + pess)
    if isinstance(targets, np.ndarray) and targets.dtype != object:
        return ranks[:, 0] if targets.ndim == 1 else ranks
    return [ranks[q, : int(mask[q].sum())] for q in range(ranks.shape[0])]


# ---------------------------------------------------------------- summaries
def summarize(best_ranks: np.ndarray, ap: np.ndarray, ks=DEFAULT_KS, ties: str = "optimistic") -> dict:
    """Metrics dict from per-query best ranks and APs. R@K, rsum and mAP in percent.

    ``ties`` is recorded; ``official`` also floors MedR, as the official LAFF evaluation does.
    """
    best_ranks = np.asarray(best_ranks, np.float64)
    out: dict = {}
    n = best_ranks.size
    for k in ks:
        out[f"R@{k}"] = float(100.0 * np.mean(best_ranks <= k)) if n else float("nan")
    medr = float(np.median(best_ranks)) if n else float("nan")
    out["MedR"] = float(np.floor(medr)) if ties == OFFICIAL and n else medr
    out["MeanR"] = float(np.mean(best_ranks)) if n else float("nan")
    out["mIR"] = float(np.mean(1.0 / best_ranks)) if n else float("nan")
    out["mAP"] = float(100.0 * np.mean(ap)) if n else float("nan")
    out["rsum"] = float(sum(out[f"R@{k}"] for k in ks))
    out["num_queries"] = int(n)
    out["ties"] = ties
    return out


def _iter_chunks(scores, chunk_size: int) -> Iterator[tuple[int, np.ndarray]]:
    if isinstance(scores, np.ndarray):
        if scores.ndim != 2:
            raise ValueError(f"scores must be [N, M], got shape {scores.shape}")
        for s in range(0, scores.shape[0], chunk_size):
            yield s, scores[s : s + chunk_size]
    else:
        yield from scores


def retrieval_ranks(
    scores: np.ndarray | ScoreChunks,
    query_targets: Sequence[Sequence[int]] | np.ndarray,
    ties: str = "optimistic",
    chunk_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-query best rank [N] (float64) and AP [N] (fraction), chunk by chunk."""
    _check_ties(ties)
    idx, mask = _pad_targets(query_targets)
    n = idx.shape[0]
    best = np.full(n, np.nan)
    ap = np.full(n, np.nan)
    seen = np.zeros(n, bool)
    m = None
    for off, chunk in _iter_chunks(scores, chunk_size):
        chunk = np.asarray(chunk)
        if chunk.ndim != 2:
            raise ValueError(f"score chunk at row {off} must be 2-D, got shape {chunk.shape}")
        if m is None:
            m = chunk.shape[1]
            if idx[mask].size and (idx[mask].max() >= m or idx[mask].min() < 0):
                raise ValueError(f"a relevant index is out of range [0, {m})")
        elif chunk.shape[1] != m:
            raise ValueError(f"score chunk at row {off} has {chunk.shape[1]} columns, expected {m}")
        end = off + chunk.shape[0]
        if off < 0 or end > n:
            raise ValueError(f"score chunk rows [{off}, {end}) outside the {n} queries")
        if seen[off:end].any():
            raise ValueError(f"score rows [{off}, {end}) given twice")
        best[off:end], ap[off:end] = _chunk_stats(chunk, idx[off:end], mask[off:end], ties)
        seen[off:end] = True
        del chunk  # free it before the next chunk is produced
    if not seen.all():
        raise ValueError(f"no scores for query {int(np.argmin(seen))} (of {n})")
    return best, ap


def retrieval_metrics(
    scores: np.ndarray | ScoreChunks,
    query_targets: Sequence[Sequence[int]] | np.ndarray,
    ks=DEFAULT_KS,
    ties: str = "optimistic",
    chunk_size: int = 4096,
    return_ranks: bool = False,
):
    """R@K, MedR, MeanR, mIR, mAP, rsum over N queries × M candidates.

    ``scores``: the full [N, M] matrix, or an iterable of (row_offset, chunk [n, M]) that
    covers every query row exactly once (each chunk is reduced and dropped).
    ``query_targets``: per query its relevant candidate indices ([N] ints when there is
    exactly one). Ties: see the module docstring. R@K, rsum (= sum of R@K over ks) and mAP
    are percentages; mIR is a fraction. With ``return_ranks`` also returns the best ranks [N].
    """
    best, ap = retrieval_ranks(scores, query_targets, ties, chunk_size)
    out = summarize(best, ap, ks, ties)
    return (out, best) if return_ranks else out


# ---------------------------------------------------------------- both directions
class InnerProductRows:
    """rows(start, stop) -> queries[start:stop] @ candidates.T (float32), computed on demand."""

    def __init__(self, queries: np.ndarray, candidates: np.ndarray):
        self.q = np.ascontiguousarray(queries, dtype=np.float32)
        c = np.ascontiguousarray(candidates, dtype=np.float32)
        if self.q.ndim != 2 or c.ndim != 2 or self.q.shape[1] != c.shape[1]:
            raise ValueError(f"queries {self.q.shape} and candidates {c.shape} must be [*, d], same d")
        self.ct = c.T
        self.shape = (self.q.shape[0], c.shape[0])

    def __call__(self, start: int, stop: int) -> np.ndarray:
        return self.q[start:stop] @ self.ct


def inner_product_rows(queries: np.ndarray, candidates: np.ndarray) -> InnerProductRows:
    """A row provider for t2v_v2t_metrics: sim = queries @ candidates.T, never materialised."""
    return InnerProductRows(queries, candidates)


def scores_in_chunks(
    queries: np.ndarray, candidates: np.ndarray, chunk_size: int = 4096
) -> Iterator[tuple[int, np.ndarray]]:
    """(row_offset, queries[rows] @ candidates.T) pieces, float32, for retrieval_metrics."""
    rows = InnerProductRows(queries, candidates)
    n = rows.shape[0]
    for s in range(0, n, chunk_size):
        yield s, rows(s, min(n, s + chunk_size))


def _video_slots(caption_video: np.ndarray, n_videos: int):
    """slot[c] = order of caption c among its video's captions; counts per video."""
    counts = np.bincount(caption_video, minlength=n_videos)
    order = np.argsort(caption_video, kind="stable")
    starts = np.cumsum(counts) - counts
    slot = np.empty_like(caption_video)
    slot[order] = np.arange(caption_video.size) - starts[caption_video[order]]
    return slot, counts


def _v2t_counts(X, c0, cap_vid, S_v, mask_v, need_gt, need_ge, gt, ge, cap_idx=None):
    """Add one caption chunk X [n, Nv] to the v2t counts of irrelevant captions above S_v.

    ``cap_idx`` [Nv, R] (official order): the caption index of each relevant item, so that a
    tied caption with a larger index counts as before it.
    """
    n, nv = X.shape
    rows = np.arange(c0, c0 + n)[:, None] if cap_idx is not None else None
    block = max(1, _BLOCK_ELEMS // max(nv, 1))
    for r in range(S_v.shape[1]):
        cols = np.nonzero(mask_v[:, r])[0]
        full = cols.size == nv
        t = S_v[:, r] if full else S_v[cols, r]
        item = None if cap_idx is None else (cap_idx[:, r] if full else cap_idx[cols, r])
        for b0 in range(0, n, block):
            blk = X[b0 : b0 + block]
            if not full:
                blk = blk[:, cols]
            if need_gt:
                cand = None if rows is None else rows[b0 : b0 + block]
                c = np.count_nonzero(_above(blk, t, cand, item), axis=0)
                if full:
                    gt[:, r] += c
                else:
                    gt[cols, r] += c
            if need_ge:
                c = np.count_nonzero(blk >= t, axis=0)
                if full:
                    ge[:, r] += c
                else:
                    ge[cols, r] += c
    # Take back exactly what the chunk's relevant captions contributed above.
    V = cap_vid[c0 : c0 + n]
    x = X[np.arange(n), V][:, None]
    tv, mv = S_v[V], mask_v[V]
    if need_gt:
        cand = None if rows is None else rows
        item = None if cap_idx is None else cap_idx[V]
        np.subtract.at(gt, V, (_above(x, tv, cand, item) & mv).astype(np.int64))
    if need_ge:
        np.subtract.at(ge, V, ((x >= tv) & mv).astype(np.int64))


def t2v_v2t_metrics(
    sim: np.ndarray | RowProvider,
    caption_video: np.ndarray,
    ks=DEFAULT_KS,
    ties: str = "optimistic",
    chunk_size: int = 4096,
    num_videos: int | None = None,
    return_ranks: bool = False,
):
    """Text→video and video→text metrics from caption×video similarities.

    ``sim``: [Ncaptions, Nvideos] array, or rows(start, stop) -> sim[start:stop] (e.g.
    inner_product_rows(text, video)) so that only chunk_size rows exist at a time.
    ``caption_video[c]``: index of the video caption c describes. t2v: one relevant video
    per caption. v2t: a video's queries rank all captions, every caption of the video is
    relevant; videos without captions are left out of v2t (logged). A row provider is
    called twice per chunk (v2t needs every relevant score before counting), so it must
    return the same values for the same range.
    """
    _check_ties(ties)
    cap_vid = np.asarray(caption_video)
    if cap_vid.ndim != 1 or (cap_vid.size and not np.issubdtype(cap_vid.dtype, np.integer)):
        raise ValueError("caption_video must be a 1-D integer array")
    cap_vid = cap_vid.astype(np.int64, copy=False)
    n_cap = cap_vid.size
    if isinstance(sim, np.ndarray):
        if sim.ndim != 2 or sim.shape[0] != n_cap:
            raise ValueError(f"sim has shape {sim.shape}, expected [{n_cap}, n_videos]")
        n_vid = sim.shape[1]
        rows: RowProvider = lambda s, e: sim[s:e]  # noqa: E731
    else:
        rows = sim
        n_vid = num_videos or getattr(sim, "shape", (None, None))[1]
        if n_vid is None:
            n_vid = rows(0, min(1, n_cap)).shape[1]
    if num_videos is not None and num_videos != n_vid:
        raise ValueError(f"num_videos={num_videos} but sim has {n_vid} columns")
    if n_cap and (cap_vid.min() < 0 or cap_vid.max() >= n_vid):
        raise ValueError(f"caption_video has a video index outside [0, {n_vid})")

    ranges = [(s, min(n_cap, s + chunk_size)) for s in range(0, n_cap, chunk_size)]
    need_gt, need_ge = _needs(ties)
    # Pass 1: t2v from each caption row, and every caption's own score for v2t.
    t2v_best = np.empty(n_cap)
    t2v_ap = np.empty(n_cap)
    own = np.zeros(n_cap, np.float32)
    t_idx = cap_vid[:, None]
    t_mask = np.ones((n_cap, 1), bool)
    for s, e in ranges:
        X = np.asarray(rows(s, e))
        if X.shape != (e - s, n_vid):
            raise ValueError(f"sim rows [{s}, {e}) have shape {X.shape}, expected {(e - s, n_vid)}")
        t2v_best[s:e], t2v_ap[s:e] = _chunk_stats(X, t_idx[s:e], t_mask[s:e], ties)
        own = own.astype(X.dtype, copy=False)  # keep the chunk's dtype: comparisons stay exact
        own[s:e] = X[np.arange(e - s), cap_vid[s:e]]
        del X  # free it before the next chunk is produced
    # Pass 2: v2t, counting each video's irrelevant captions above each relevant one.
    slot, counts = _video_slots(cap_vid, n_vid)
    r_max = max(int(counts.max()) if n_vid else 0, 1)
    S_v = np.full((n_vid, r_max), -np.inf, dtype=own.dtype)
    mask_v = np.zeros((n_vid, r_max), bool)
    S_v[cap_vid, slot] = own
    mask_v[cap_vid, slot] = True
    cap_idx = None
    if ties == OFFICIAL:
        cap_idx = np.zeros((n_vid, r_max), np.int64)
        cap_idx[cap_vid, slot] = np.arange(n_cap)
    gt = np.zeros((n_vid, r_max), np.int64) if need_gt else None
    ge = np.zeros((n_vid, r_max), np.int64) if need_ge else None
    for s, e in ranges:
        X = np.asarray(rows(s, e))
        _v2t_counts(X, s, cap_vid, S_v, mask_v, need_gt, need_ge, gt, ge, cap_idx)
        del X
    has = counts > 0
    if not has.all():
        log.warning("%d of %d videos have no caption; left out of video->text", int((~has).sum()), n_vid)
    v2t_best, v2t_ap = _positions(
        S_v[has], mask_v[has], gt[has] if need_gt else None, ge[has] if need_ge else None, ties,
        cap_idx[has] if cap_idx is not None else None,
    )
    out = {
        "t2v": summarize(t2v_best, t2v_ap, ks, ties),
        "v2t": summarize(v2t_best, v2t_ap, ks, ties),
    }
    if return_ranks:
        return out, {"t2v": t2v_best, "v2t": v2t_best}
    return out
