"""Ranking losses over a text x video score matrix with an explicit positives mask.

A batch may hold several captions of the same video; ``positives[i, j]`` marks every
(caption, video) pair that belongs together, so same-video captions are never treated as
negatives of each other:

- triplet: the hardest negative of a row/column is taken over non-positives only;
- InfoNCE: each positive pair is one term whose denominator is that pair plus the
  row's (t2v) or column's (v2t) negatives, i.e. the *other* positives are masked out of
  the denominator rather than pushed away; terms are averaged over positive pairs.
"""

from __future__ import annotations

import torch


def _check(scores: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    if scores.shape != positives.shape:
        raise ValueError(f"scores {list(scores.shape)} and positives {list(positives.shape)} differ")
    return positives.to(device=scores.device, dtype=torch.bool)


def triplet_ranking_loss(
    scores: torch.Tensor,
    positives: torch.Tensor,
    margin: float = 0.2,
    direction: str = "t2v",
    hardest: bool = True,
) -> torch.Tensor:
    """VSE++ hinge ranking loss, summed over positive pairs (and over the batch).

    ``direction``: ``"t2v"`` (query text, rank videos: as in LAFF), ``"v2t"`` or ``"both"``.
    ``hardest``: max over negatives (VSE++) instead of the sum over all (VSE0).
    """
    if direction not in ("t2v", "v2t", "both"):
        raise ValueError(f"triplet loss direction must be t2v, v2t or both, not {direction!r}")
    pos = _check(scores, positives)
    pos_scores = scores.masked_select(pos)  # pairs in row-major order
    rows, cols = pos.nonzero(as_tuple=True)
    total = scores.new_zeros(())
    dims = {"t2v": [1], "v2t": [0], "both": [1, 0]}[direction]
    for dim in dims:
        if hardest:
            neg = scores.masked_fill(pos, float("-inf")).amax(dim=dim)  # -inf: no negative
            hard = neg[rows] if dim == 1 else neg[cols]
            total = total + (margin - pos_scores + hard).clamp(min=0).sum()
        else:
            anchor = pos_scores[:, None]
            others = scores[rows] if dim == 1 else scores[:, cols].t()
            negmask = ~(pos[rows] if dim == 1 else pos[:, cols].t())
            total = total + ((margin - anchor + others).clamp(min=0) * negmask).sum()
    return total


def info_nce(logits: torch.Tensor, positives: torch.Tensor, symmetric: bool = True) -> torch.Tensor:
    """Multi-positive InfoNCE (see module doc); mean over positive pairs, averaged over directions."""
    pos = _check(logits, positives)
    rows, cols = pos.nonzero(as_tuple=True)
    pos_logits = logits[rows, cols]
    masked = logits.masked_fill(pos, float("-inf"))
    terms = []
    for dim in ([1, 0] if symmetric else [1]):
        neg_lse = torch.logsumexp(masked, dim=dim)
        neg_lse = neg_lse[rows] if dim == 1 else neg_lse[cols]
        # row without negatives: log(exp(p)) - p = 0, without -inf arithmetic in the graph
        has_neg = torch.isfinite(neg_lse)
        safe = torch.where(has_neg, neg_lse, pos_logits.detach())
        term = torch.logaddexp(pos_logits, safe) - pos_logits
        terms.append(torch.where(has_neg, term, torch.zeros_like(term)).mean())
    return sum(terms) / len(terms)
