"""Retrieval metrics against a naive per-query reference, ties included, chunked and full."""

import math

import numpy as np
import pytest

from index.metrics import (
    inner_product_rows,
    ranks_from_scores,
    retrieval_metrics,
    scores_in_chunks,
    t2v_v2t_metrics,
)


# ---------------------------------------------------------------- naive reference (loops)
def _ordering_positions(row, relevant, relevant_first):
    """1-based positions of the relevant items after sorting candidates by score, ties broken
    for (relevant_first) or against the relevant items, by explicit python sorting."""
    rel = set(int(r) for r in relevant)
    cands = list(range(len(row)))
    key = lambda c: (-float(row[c]), 0 if (c in rel) == relevant_first else 1)  # noqa: E731
    ordered = sorted(cands, key=key)
    return [p + 1 for p, c in enumerate(ordered) if c in rel]


def naive_metrics(scores, targets, ks=(1, 5, 10), ties="optimistic"):
    best, aps = [], []
    for q, row in enumerate(scores):
        rel = targets[q]
        opt = _ordering_positions(row, rel, True)
        pes = _ordering_positions(row, rel, False)
        pos = {"optimistic": opt, "pessimistic": pes,
               "average": [(a + b) / 2 for a, b in zip(opt, pes)]}[ties]
        best.append(pos[0])
        aps.append(sum((i + 1) / p for i, p in enumerate(pos)) / len(pos))
    best = np.array(best, float)
    out = {f"R@{k}": 100 * float(np.mean(best <= k)) for k in ks}
    out.update(MedR=float(np.median(best)), MeanR=float(best.mean()),
               mIR=float(np.mean(1 / best)), mAP=100 * float(np.mean(aps)))
    out["rsum"] = sum(out[f"R@{k}"] for k in ks)
    return out, best


def naive_item_ranks(row, relevant, ties):
    rel = set(int(r) for r in relevant)
    out = []
    for j in relevant:
        s = row[j]
        higher = sum(1 for c in range(len(row)) if row[c] > s)
        tied_irr = sum(1 for c in range(len(row)) if row[c] == s and c not in rel)
        opt, pes = 1 + higher, 1 + higher + tied_irr
        out.append({"optimistic": opt, "pessimistic": pes, "average": (opt + pes) / 2}[ties])
    return out


def assert_same(got, ref):
    for key, val in ref.items():
        assert got[key] == pytest.approx(val, rel=1e-9, abs=1e-9), key


# ---------------------------------------------------------------- hand-computed cases
def test_hand_computed_3x3():
    sim = np.array([[0.9, 0.1, 0.5],   # target 0 -> rank 1
                    [0.8, 0.3, 0.7],   # target 1 -> 0.8, 0.7 above -> rank 3
                    [0.2, 0.6, 0.4]])  # target 2 -> 0.6 above -> rank 2
    m = retrieval_metrics(sim, np.array([0, 1, 2]))
    assert m["R@1"] == pytest.approx(100 / 3)
    assert m["R@5"] == 100.0 and m["R@10"] == 100.0
    assert m["MedR"] == 2.0 and m["MeanR"] == 2.0
    assert m["mIR"] == pytest.approx((1 + 1 / 3 + 1 / 2) / 3)
    assert m["mAP"] == pytest.approx(100 * (1 + 1 / 3 + 1 / 2) / 3)
    assert m["rsum"] == pytest.approx(100 / 3 + 200)
    assert m["num_queries"] == 3 and m["ties"] == "optimistic"
    assert ranks_from_scores(sim, np.array([0, 1, 2])).tolist() == [1, 3, 2]


def test_hand_computed_ties_and_multi_relevant_ap():
    # all equal: optimistic rank 1, pessimistic 3 (two irrelevant tied above), average 2
    sim = np.array([[1.0, 1.0, 1.0]])
    assert ranks_from_scores(sim, np.array([1]), "optimistic").tolist() == [1]
    assert ranks_from_scores(sim, np.array([1]), "pessimistic").tolist() == [3]
    assert ranks_from_scores(sim, np.array([1]), "average").tolist() == [2.0]
    # relevant {0, 3}; scores: 3 is best, 0 is third -> positions 1 and 3 -> AP = (1/1 + 2/3)/2
    sim = np.array([[0.5, 0.7, 0.1, 0.9]])
    m = retrieval_metrics(sim, [[0, 3]], ks=(1,))
    assert m["R@1"] == 100.0 and m["MedR"] == 1.0
    assert m["mAP"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    # two relevant items tied with each other at the top never push each other down
    sim = np.array([[0.9, 0.9, 0.1]])
    m = retrieval_metrics(sim, [[0, 1]], ks=(1,), ties="pessimistic")
    assert m["MedR"] == 1.0 and m["mAP"] == pytest.approx(100.0)
    assert ranks_from_scores(sim, [[0, 1]], "pessimistic")[0].tolist() == [1, 1]


def test_sort_order_luck_is_not_used():
    """The target is tied with every candidate: an argsort-based rank would say 1 or 1000."""
    sim = np.zeros((4, 1000), np.float32)
    t = np.array([0, 999, 500, 3])
    assert (ranks_from_scores(sim, t, "optimistic") == 1).all()
    assert (ranks_from_scores(sim, t, "pessimistic") == 1000).all()
    m = retrieval_metrics(sim, t, ties="average")
    assert m["MedR"] == 500.5 and m["R@10"] == 0.0


# ---------------------------------------------------------------- random vs reference
@pytest.mark.parametrize("ties", ["optimistic", "average", "pessimistic"])
@pytest.mark.parametrize("integer_scores", [True, False])
def test_single_target_matches_naive(ties, integer_scores):
    rng = np.random.default_rng(1)
    n, m = 60, 40
    sim = rng.integers(0, 6, (n, m)).astype(np.float32) if integer_scores \
        else rng.standard_normal((n, m)).astype(np.float32)
    targets = rng.integers(0, m, n)
    ref, ref_best = naive_metrics(sim, [[t] for t in targets], ks=(1, 5, 10), ties=ties)
    got, best = retrieval_metrics(sim, targets, ties=ties, return_ranks=True)
    assert_same(got, ref)
    np.testing.assert_allclose(best, ref_best)
    ranks = ranks_from_scores(sim, targets, ties)
    np.testing.assert_allclose(ranks, [naive_item_ranks(sim[q], [targets[q]], ties)[0] for q in range(n)])
    # chunked (odd chunk sizes, out-of-order chunks) equals full
    pieces = [(s, sim[s:s + 7]) for s in range(0, n, 7)][::-1]
    assert retrieval_metrics(iter(pieces), targets, ties=ties) == got
    assert retrieval_metrics(sim, targets, ties=ties, chunk_size=5) == got


@pytest.mark.parametrize("ties", ["optimistic", "average", "pessimistic"])
def test_multi_relevant_matches_naive(ties):
    rng = np.random.default_rng(2)
    n, m = 40, 30
    sim = rng.integers(0, 4, (n, m)).astype(np.float64)  # heavy ties
    targets = [rng.choice(m, size=rng.integers(1, 6), replace=False) for _ in range(n)]
    ref, _ = naive_metrics(sim, targets, ties=ties)
    got = retrieval_metrics(sim, targets, ties=ties, chunk_size=9)
    assert_same(got, ref)
    ranks = ranks_from_scores(sim, targets, ties)
    for q in range(n):
        np.testing.assert_allclose(ranks[q], naive_item_ranks(sim[q], targets[q], ties))


@pytest.mark.parametrize("ties", ["optimistic", "average"])
@pytest.mark.parametrize("integer_scores", [True, False])
def test_t2v_v2t_matches_naive(ties, integer_scores):
    rng = np.random.default_rng(3)
    n_vid = 25
    cap_vid = np.concatenate([np.repeat(np.arange(n_vid), rng.integers(1, 5, n_vid))])
    rng.shuffle(cap_vid)
    n_cap = cap_vid.size
    sim = rng.integers(0, 5, (n_cap, n_vid)).astype(np.float32) if integer_scores \
        else rng.standard_normal((n_cap, n_vid)).astype(np.float32)
    got = t2v_v2t_metrics(sim, cap_vid, ties=ties, chunk_size=8)
    ref_t2v, _ = naive_metrics(sim, [[v] for v in cap_vid], ties=ties)
    v_targets = [np.nonzero(cap_vid == v)[0] for v in range(n_vid)]
    ref_v2t, _ = naive_metrics(sim.T, v_targets, ties=ties)
    assert_same(got["t2v"], ref_t2v)
    assert_same(got["v2t"], ref_v2t)
    assert got["v2t"]["num_queries"] == n_vid and got["t2v"]["num_queries"] == n_cap
    # the same through the generic function on the transposed matrix
    assert_same(retrieval_metrics(np.ascontiguousarray(sim.T), v_targets, ties=ties), ref_v2t)


def test_t2v_v2t_row_provider_equals_full_matrix():
    """Chunked products equal one product: within float32 rounding on real-valued vectors (BLAS
    sums a 20-row block in another order than a 150-row one), and bit for bit, with equal metrics,
    on small-integer vectors, whose products are exact in any order."""
    rng = np.random.default_rng(4)
    n_vid, d = 50, 16
    cap_vid = np.repeat(np.arange(n_vid), 3)
    video = rng.standard_normal((n_vid, d)).astype(np.float32)
    text = (video[cap_vid] + rng.standard_normal((cap_vid.size, d)).astype(np.float32))
    chunks = list(scores_in_chunks(text, video, chunk_size=20))
    assert [o for o, _ in chunks] == list(range(0, 150, 20))
    np.testing.assert_allclose(np.concatenate([c for _, c in chunks]), text @ video.T, rtol=1e-5, atol=1e-5)

    video = rng.integers(-4, 5, (n_vid, d)).astype(np.float32)
    text = video[cap_vid] + rng.integers(-3, 4, (cap_vid.size, d)).astype(np.float32)
    rows = inner_product_rows(text, video)
    full = text @ video.T
    for ties in ("optimistic", "average"):  # integer scores tie often: both tie rules are exercised
        a = t2v_v2t_metrics(rows, cap_vid, ties=ties, chunk_size=13)
        b = t2v_v2t_metrics(full, cap_vid, ties=ties, chunk_size=1000)
        assert a == b
    chunks = list(scores_in_chunks(text, video, chunk_size=20))
    assert [o for o, _ in chunks] == list(range(0, 150, 20))
    # BLAS blocks a 20-row product differently from a 150-row one: the same values up to rounding
    np.testing.assert_allclose(np.concatenate([c for _, c in chunks]), rows(0, 150), rtol=1e-5, atol=1e-5)
    assert retrieval_metrics(iter(chunks), cap_vid) == retrieval_metrics(np.concatenate([c for _, c in chunks]), cap_vid)


def test_v2t_skips_videos_without_captions():
    sim = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0]], np.float32)
    out = t2v_v2t_metrics(sim, np.array([0, 1]))
    assert out["v2t"]["num_queries"] == 2 and out["v2t"]["R@1"] == 100.0
    assert out["t2v"]["R@1"] == 100.0


def test_bad_inputs_are_refused():
    sim = np.zeros((2, 3))
    with pytest.raises(ValueError, match="ties"):
        retrieval_metrics(sim, np.array([0, 1]), ties="random")
    with pytest.raises(ValueError, match="out of range"):
        retrieval_metrics(sim, np.array([0, 3]))
    with pytest.raises(ValueError, match="twice"):
        retrieval_metrics(sim, [[0, 0], [1]])
    with pytest.raises(ValueError, match="no relevant"):
        retrieval_metrics(sim, [[0], []])
    with pytest.raises(ValueError, match="no scores for query 1"):
        retrieval_metrics(iter([(0, sim[:1])]), np.array([0, 1]))
    with pytest.raises(ValueError, match="given twice"):
        retrieval_metrics(iter([(0, sim), (1, sim[1:])]), np.array([0, 1]))
    bad = sim.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        retrieval_metrics(bad, np.array([0, 1]))
    # a NaN candidate is never "higher"
    assert ranks_from_scores(np.array([[np.nan, 0.0]]), np.array([1])).tolist() == [1]
    assert math.isnan(retrieval_metrics(np.zeros((0, 3)), np.zeros(0, int))["MedR"])


# ---------------------------------------------------------------- official (compatibility) mode
def official_reference(scores, targets, ks=(1, 5, 10)):
    """What the official LAFF evaluation computes, written from its procedure: order the
    candidates by a stable ascending argsort reversed, mark the relevant ones in a label
    matrix, rank = position of the first, AP over all, MedR = floor(median)."""
    best, aps = [], []
    for q, row in enumerate(scores):
        order = np.argsort(row, kind="stable")[::-1]
        labels = np.isin(order, np.asarray(targets[q]))
        pos = np.nonzero(labels)[0] + 1
        best.append(pos[0])
        aps.append(np.mean([(i + 1) / p for i, p in enumerate(pos)]))
    best = np.array(best, float)
    out = {f"R@{k}": 100 * float(np.mean(best <= k)) for k in ks}
    out.update(MedR=float(np.floor(np.median(best))), MeanR=float(best.mean()),
               mIR=float(np.mean(1 / best)), mAP=100 * float(np.mean(aps)))
    out["rsum"] = sum(out[f"R@{k}"] for k in ks)
    return out, best


def test_official_mode_hand_worked_with_ties():
    # query 0: target 1 tied with 0 and 2 at the top; reversed stable order 2, 1, 0 -> rank 2
    # query 1: target 0 tied with 2 below 1; order 1, 2, 0 -> rank 3
    # query 2: target 2 tied with 0 at the top; order 2, 0, 1 -> rank 1
    # query 3: target 1 alone at the top -> rank 1
    sim = np.array([[0.5, 0.5, 0.5],
                    [0.2, 0.9, 0.2],
                    [0.7, 0.1, 0.7],
                    [0.3, 0.8, 0.3]])
    targets = np.array([1, 0, 2, 1])
    assert ranks_from_scores(sim, targets, "official").tolist() == [2, 3, 1, 1]
    m = retrieval_metrics(sim, targets, ks=(1, 5), ties="official")
    assert m["ties"] == "official"
    assert m["R@1"] == 50.0 and m["R@5"] == 100.0
    assert m["MedR"] == 1.0  # median of (1, 1, 2, 3) is 1.5, floored as the official code does
    assert m["MeanR"] == pytest.approx(7 / 4)
    assert m["mIR"] == pytest.approx((1 / 2 + 1 / 3 + 1 + 1) / 4)
    # the tie-safe modes on the same scores: no sort-order luck, MedR not floored
    assert ranks_from_scores(sim, targets, "optimistic").tolist() == [1, 2, 1, 1]
    assert ranks_from_scores(sim, targets, "pessimistic").tolist() == [3, 3, 2, 1]
    assert retrieval_metrics(sim, targets, ties="average")["MedR"] == pytest.approx(1.75)
    # two relevant items tied with an irrelevant one: order 2, 1, 0 -> positions 1 (item 2)
    # and 3 (item 0) -> AP = (1/1 + 2/3) / 2
    m = retrieval_metrics(np.array([[0.4, 0.4, 0.4]]), [[0, 2]], ks=(1,), ties="official")
    assert m["R@1"] == 100.0 and m["mAP"] == pytest.approx(100 * (1 + 2 / 3) / 2)


@pytest.mark.parametrize("integer_scores", [True, False])
def test_official_mode_matches_the_official_procedure(integer_scores):
    rng = np.random.default_rng(5)
    n_vid = 25
    cap_vid = np.repeat(np.arange(n_vid), rng.integers(1, 5, n_vid))
    rng.shuffle(cap_vid)
    sim = rng.integers(0, 4, (cap_vid.size, n_vid)).astype(np.float32) if integer_scores \
        else rng.standard_normal((cap_vid.size, n_vid)).astype(np.float32)
    got = t2v_v2t_metrics(sim, cap_vid, ties="official", chunk_size=7)
    ref_t2v, best = official_reference(sim, [[v] for v in cap_vid])
    v_targets = [np.nonzero(cap_vid == v)[0] for v in range(n_vid)]
    ref_v2t, _ = official_reference(np.ascontiguousarray(sim.T), v_targets)
    assert_same(got["t2v"], ref_t2v)
    assert_same(got["v2t"], ref_v2t)
    assert got["t2v"]["ties"] == got["v2t"]["ties"] == "official"
    assert_same(retrieval_metrics(np.ascontiguousarray(sim.T), v_targets, ties="official", chunk_size=4), ref_v2t)
    np.testing.assert_allclose(ranks_from_scores(sim, cap_vid, "official"), best)


def test_candidate_ranks_follow_the_tie_rule():
    from index.benchmark import candidate_ranks

    # target (video 7) tied with videos 2 and 9 below one better candidate; video 4 not retrieved
    scores = np.array([[0.9, 0.5, 0.5, 0.5, 0.1]] * 2)
    positions = np.array([[3, 7, 2, 9, 1]] * 2)
    targets = np.array([7, 4])
    expect = {"optimistic": 2, "pessimistic": 4, "average": 3, "official": 3}  # official: 9 before 7, 2 after
    for ties, rank in expect.items():
        assert candidate_ranks(scores, positions, targets, ties).tolist() == [rank, np.inf], ties
