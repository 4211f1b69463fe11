"""Indexes for large corpora: streaming build, memory budget, shards, --add on every form,
GPU paths through their CPU twins, and the benchmark's through-index and chance rows."""

from __future__ import annotations

import json
import math
import os

import faiss
import numpy as np
import pytest

from index.autoindex import ExactTopK, candidate_factories, choose_factory, code_rivals, knn_recall, parse_memory
from index.faiss_index import IndexStoreError, VideoIndex, normalize_device
from index.run_index import build_streaming
from stage_fixtures import built_index, cli, stage_data, trained_run  # noqa: F401  (fixture)


def clustered(n: int, d: int, seed: int, centers: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + 0.5 * rng.standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def ids_for(n: int, start: int = 0) -> list[str]:
    return [f"v{i}" for i in range(start, start + n)]


def chunked(x: np.ndarray, ids: list[str], size: int):
    """The chunks callable build_streaming takes: every row, or the rows at given positions."""
    def chunks(positions):
        rows = np.arange(len(ids)) if positions is None else np.asarray(positions)
        for s in range(0, len(rows), size):
            part = rows[s:s + size]
            yield x[part], [ids[p] for p in part]
    return chunks


X = clustered(3000, 32, seed=0)
Q = clustered(40, 32, seed=1)
IDS = ids_for(3000)


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "IVF16,SQ8"])
def test_streaming_build_equals_the_in_memory_build(factory):
    whole = VideoIndex.build(X, IDS, factory=factory, device="cpu", seed=3, nprobe=None if factory == "Flat" else 4)
    streamed = build_streaming(chunked(X, IDS, 137), len(IDS), 32, factory, device="cpu", seed=3,
                               nprobe=None if factory == "Flat" else 4)
    assert streamed.ids == whole.ids and streamed.meta["train_rows"] == whole.meta["train_rows"]
    s1, p1 = whole.search_positions(Q, 10)
    s2, p2 = streamed.search_positions(Q, 10)
    if factory == "Flat":
        np.testing.assert_array_equal(p1, p2)
        np.testing.assert_allclose(s1, s2, rtol=1e-6)
    else:  # same seeded sample, same k-means seed: the same index, byte for byte
        assert faiss.serialize_index(whole.index).tobytes() == faiss.serialize_index(streamed.index).tobytes()
        np.testing.assert_array_equal(p1, p2)


@pytest.mark.parametrize("factory", ["PCA32,Flat", "PCAR32,Flat", "PCA32,IVF16,Flat"])
def test_an_inner_product_pca_that_keeps_every_dim_ranks_as_exact_search(factory, tmp_path):
    """PCA is a rotation here; centred, it would add -mean.x to each score and reorder them."""
    assert np.linalg.norm(X.mean(0)) > 0.1  # the shift the test would catch is not negligible
    flat = VideoIndex.build(X, IDS, device="cpu")
    pca = VideoIndex.build(X, IDS, factory=factory, device="cpu", seed=3, nprobe=16 if "IVF" in factory else None)
    pca.save(str(tmp_path / "pca"))
    loaded = VideoIndex.load(str(tmp_path / "pca"))
    s1, p1 = flat.search_positions(Q, 10)
    for index in (pca, loaded):
        s2, p2 = index.search_positions(Q, 10)
        np.testing.assert_allclose(s2, s1, atol=1e-4)
        assert knn_recall(p2, p1, 10) == 1.0


def test_pq_codes_skip_polysemous_training_and_search_the_same(monkeypatch):
    """Polysemous training reorders PQ codebooks for Hamming search, which vidfuse never runs:
    skipping it (most of a PQ index's training time) must leave every search result as it was."""
    import index.faiss_index as faiss_index

    def ivf_of(index: VideoIndex):
        return faiss.downcast_index(faiss.extract_index_ivf(index.cpu_index()))

    skipped = VideoIndex.build(X, IDS, factory="IVF16,PQ8x4", device="cpu", seed=3, nprobe=16)
    monkeypatch.setattr(faiss_index, "_skip_polysemous_training", lambda index: None)
    polysemous = VideoIndex.build(X, IDS, factory="IVF16,PQ8x4", device="cpu", seed=3, nprobe=16)
    assert [ivf_of(v).do_polysemous_training for v in (skipped, polysemous)] == [False, True]
    s1, p1 = skipped.search_positions(Q, 10)
    s2, p2 = polysemous.search_positions(Q, 10)
    np.testing.assert_allclose(s1, s2, atol=1e-5)
    np.testing.assert_array_equal(p1, p2)


def test_a_recall_target_out_of_reach_keeps_the_smallest_nprobe_near_the_best_recall():
    """Coarse PQ codes cap the recall; probing every list would buy little of it for much time."""
    from index.autoindex import PLATEAU, tune_search

    index = VideoIndex.build(X, IDS, factory="IVF16,PQ8x4", device="cpu", seed=3)
    _, exact = VideoIndex.build(X, IDS, device="cpu").search_positions(Q, 10)
    result = tune_search(index, Q, exact, k=10, target=1.0)
    tried = result["tried"]
    top = max(t["recall"] for t in tried)
    assert [t["value"] for t in tried] == [1, 2, 4, 8, 16] and top < 1.0
    kept = min(t["value"] for t in tried if t["recall"] >= top - PLATEAU)
    assert result["value"] == kept < 16  # not simply the largest nprobe tried
    assert index.meta["search_params"]["nprobe"] == kept


def test_exact_top_k_over_chunks_equals_one_flat_search():
    exact = ExactTopK(Q, 7)
    for s in range(0, len(X), 500):
        exact.add(X[s:s + 500])
    flat = VideoIndex.build(X, IDS, device="cpu")
    scores, pos = flat.search_positions(Q, 7)
    d, i = exact.result()
    np.testing.assert_array_equal(i, pos)
    np.testing.assert_allclose(d, scores, rtol=1e-5)
    assert knn_recall(pos, i, 7) == 1.0 and knn_recall(pos[:, ::-1][:, :1], i, 1) < 1.0


def test_stage_streaming_build_in_small_chunks_equals_the_default(stage_data, tmp_path):
    from index.run_index import build_index

    run = trained_run(stage_data, "tiny_laff_ml")
    one, _ = build_index(str(run), str(tmp_path / "one"), split="all", device="cpu")
    small, _ = build_index(str(run), str(tmp_path / "small"), split="all", device="cpu", chunk_size=7)
    assert small.ids == one.ids and len(one.ids) > 7
    q = one.reconstruct_all()[:5]
    np.testing.assert_array_equal(small.search_positions(q, 5)[1], one.search_positions(q, 5)[1])


# --------------------------------------------------------------------------- budget


@pytest.mark.parametrize("budget", ["600K", "200K", "130K"])
def test_the_chosen_factory_fits_the_budget_and_records_its_tuning(budget, tmp_path):
    limit = parse_memory(budget)
    index = build_streaming(chunked(X, IDS, 500), len(IDS), 32, None, max_index_memory=limit, target_recall=0.9,
                            device="cpu")
    assert len(code_rivals(len(IDS), 32, limit)) == 1  # no equal-size rival at these budgets: no trial
    assert index.meta["factory"] == choose_factory(len(IDS), 32, limit).factory
    index.save(str(tmp_path / "idx"))
    assert os.path.getsize(tmp_path / "idx" / "index.faiss") <= limit
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    tuning = meta["tuning"]
    assert tuning["max_index_memory"] == limit and tuning["k"] == 10 and tuning["queries"] == 1000
    assert 0 <= tuning["recall"] <= 1 and tuning["tried"][-1]["recall"] <= 1
    if tuning["param"]:  # the value kept is re-applied on load
        assert meta["search_params"][tuning["param"]] == tuning["value"]
        assert VideoIndex.load(str(tmp_path / "idx")).meta["search_params"] == meta["search_params"]


def test_the_budget_ladder_goes_from_exact_to_compressed():
    names = [c.factory for c in candidate_factories(1_000_000, 4096)]
    assert "Flat" not in names and all(n.startswith(("PCA", "PCAR")) for n in names)  # 4096-d: reduced first
    sizes = [c.bytes for c in candidate_factories(5000, 64)]
    assert candidate_factories(5000, 64)[0].factory == "Flat" and min(sizes) < sizes[0] / 3
    assert choose_factory(10_000_000, 4096, parse_memory("16G")).bytes <= parse_memory("16G")


def test_codes_of_one_size_are_rivals_that_fit_the_budget():
    budget = parse_memory("4G")
    rivals = code_rivals(10_000_000, 4096, budget)
    names = [c.factory for c in rivals]
    assert names[0] == choose_factory(10_000_000, 4096, budget).factory
    assert {"PCAR1024,IVF16384_HNSW32,PQ256", "PCAR512,IVF16384_HNSW32,PQ256", "PCA256,IVF16384_HNSW32,SQ8"} <= set(names)
    assert {c.code for c in rivals} == {256} and all(c.bytes <= budget for c in rivals)
    assert code_rivals(len(IDS), 32, parse_memory("600K"))[0].factory == "Flat"  # exact search has no rival


def low_rank(n: int, d: int, rank: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((d, rank)))[0].T
    x = rng.standard_normal((n, rank)) @ basis + 0.02 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def isotropic(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("data, expected", [("low_rank", "PCA32,IVF512,SQ8"), ("isotropic", "IVF512,PQ32")])
def test_the_budget_builds_the_equal_size_code_that_keeps_more_neighbours(data, expected, tmp_path):
    """32 bytes per vector for 64 dims: SQ8 over 32 PCA dims wins when 8 directions hold the data,
    PQ32 over all 64 when every direction counts; the trial on the sample says which, and the
    whole indexes agree."""
    n = 20_000
    x = low_rank(n, 64, 8, seed=4) if data == "low_rank" else isotropic(n, 64, seed=4)
    ids = ids_for(n)
    budget = parse_memory("1.1M")
    assert {c.factory for c in code_rivals(n, 64, budget)} == {"PCA32,IVF512,SQ8", "IVF512,PQ32"}
    built = build_streaming(chunked(x, ids, 5000), n, 64, None, max_index_memory=budget, target_recall=0.9,
                            device="cpu")
    assert built.meta["factory"] == expected
    trial = {t["factory"]: t["recall"] for t in built.meta["tuning"]["code_trial"]}
    assert set(trial) == {"PCA32,IVF512,SQ8", "IVF512,PQ32"} and max(trial, key=trial.get) == expected
    built.save(str(tmp_path / "idx"))
    assert json.loads((tmp_path / "idx" / "meta.json").read_text())["tuning"]["code_trial"]
    queries = x[:: n // 200]
    truth = faiss.knn(queries, x, 11, metric=faiss.METRIC_INNER_PRODUCT)[1]
    recall = {}
    for factory in trial:  # each code built whole and searched in every list: only the codes differ
        index = build_streaming(chunked(x, ids, 5000), n, 64, factory, device="cpu", nprobe=512)
        recall[factory] = knn_recall(index.search_positions(queries, 11)[1], truth, 10, own=np.arange(0, n, n // 200))
    assert max(recall, key=recall.get) == expected
    assert min(recall.values()) < recall[expected] - 0.03


def test_a_budget_too_small_for_any_index_names_the_smallest_that_fits():
    with pytest.raises(IndexStoreError) as err:
        choose_factory(len(IDS), 32, parse_memory("1K"))
    msg = str(err.value)
    assert "\n" not in msg and "fits no index of 3000 vectors of dim 32" in msg
    named = msg.split("--max-index-memory ")[1].split()[0]
    assert choose_factory(len(IDS), 32, parse_memory(named))  # the budget it names does fit
    with pytest.raises(IndexStoreError, match="not a size"):
        parse_memory("lots")


# --------------------------------------------------------------------------- shards and --add


def test_a_sharded_flat_index_returns_the_top_k_of_one_index(tmp_path):
    one = VideoIndex.build(X, IDS, device="cpu")
    sharded = VideoIndex.build(X, IDS, device="cpu", shard_size=700)
    assert sharded.meta["shards"] == [700, 700, 700, 700, 200]
    sharded.save(str(tmp_path / "sh"))
    assert sorted(f for f in os.listdir(tmp_path / "sh") if f.startswith("index-")) == [
        f"index-{i:03d}.faiss" for i in range(5)]
    back = VideoIndex.load(str(tmp_path / "sh"))
    for index in (sharded, back):
        s1, p1 = one.search_positions(Q, 10)
        s2, p2 = index.search_positions(Q, 10)
        np.testing.assert_array_equal(p1, p2)
        np.testing.assert_allclose(s1, s2, rtol=1e-6)
        assert index.search(Q, 3)[1] == one.search(Q, 3)[1]


@pytest.mark.parametrize("form", ["Flat", "IVF16,Flat", "sharded Flat", "sharded IVF16,Flat", "budget"])
def test_add_to_a_saved_index_equals_building_it_at_once(form, tmp_path):
    factory = form.replace("sharded ", "")
    kwargs = {"shard_size": 1000} if form.startswith("sharded") else {}

    def first(x, ids):
        if form == "budget":
            return build_streaming(chunked(x, ids, 500), len(ids), 32, None, max_index_memory=parse_memory("150K"),
                                   device="cpu")
        return VideoIndex.build(x, ids, factory=factory, device="cpu", train_size=1000, **kwargs)

    part = first(X[:1600], IDS[:1600])
    part.save(str(tmp_path / "idx"))
    loaded = VideoIndex.load(str(tmp_path / "idx"))
    loaded.add(X[1600:], IDS[1600:])
    loaded.save(str(tmp_path / "idx"))
    grown = VideoIndex.load(str(tmp_path / "idx"))
    assert grown.ids == IDS and grown.ntotal == len(IDS)
    if form.startswith("sharded"):
        assert grown.meta["shards"] == [1000, 1000, 1000]
    # the same trained index, never saved, given the rest in memory, gives the same results
    reference = first(X[:1600], IDS[:1600])
    reference.add(X[1600:], IDS[1600:])
    np.testing.assert_array_equal(grown.search_positions(Q, 10)[1], reference.search_positions(Q, 10)[1])
    assert grown.meta["search_params"] == part.meta["search_params"]  # tuned nprobe survives save, load, add
    with pytest.raises(IndexStoreError, match="already in the index"):
        grown.add(X[:2], IDS[:2])


def test_stage_index_with_budget_shards_and_add(stage_data, tmp_path, capsys):
    run = trained_run(stage_data, "tiny_laff_ml")
    out = tmp_path / "idx"
    assert cli("index", "--run", run, "--out", out, "--split", "test", "--shards", "2", "--device", "cpu",
               "--max-index-memory", "1M") == 0
    printed = capsys.readouterr().out
    assert "2 shards" in printed and "tuned:" in printed and "recall@10" in printed
    meta = json.loads((out / "meta.json").read_text())
    assert meta["factory"] == "Flat" and meta["tuning"]["recall"] == 1.0 and meta["extra"]["exact_search"] is True
    assert cli("index", "--run", run, "--out", out, "--split", "all", "--add", "--device", "cuda") == 2
    assert "device 'gpu' asked" in capsys.readouterr().err  # cuda means the GPU; none here
    assert cli("index", "--run", run, "--out", out, "--split", "all", "--add", "--device", "cpu") == 0
    whole = VideoIndex.load(str(built_index(stage_data, run, "all")))
    grown = VideoIndex.load(str(out))
    assert sorted(grown.ids) == sorted(whole.ids) and len(grown.meta["shards"]) > 2
    q = whole.reconstruct_all()[:6]
    assert [sorted(r) for r in grown.search(q, 4)[1]] == [sorted(r) for r in whole.search(q, 4)[1]]
    assert cli("index", "--run", run, "--out", tmp_path / "tiny", "--max-index-memory", "1K") == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if " INFO " not in line]  # progress lines
    assert len(err) == 1 and err[0].startswith("vidfuse index: error: a memory budget of 1.00K fits no index")
    assert "--max-index-memory" in err[0] and not (tmp_path / "tiny").exists()


# --------------------------------------------------------------------------- GPU, through CPU twins


def test_cuda_and_gpu_name_the_same_device():
    assert [normalize_device(d) for d in ("cuda", "CUDA:1", "gpu", "cpu", "auto")] == ["gpu", "gpu", "gpu", "cpu", "auto"]
    if faiss.get_num_gpus() == 0:
        for device in ("gpu", "cuda", "cuda:0"):
            with pytest.raises(IndexStoreError, match="asked but this FAISS build"):
                VideoIndex.build(X[:50], IDS[:50], device=device)


def test_load_for_a_run_searches_on_the_gpu_by_default_and_big_ivf_keeps_its_lists_on_cpu(monkeypatch):
    """The GPU branch, run with the GPU calls replaced by recorders (this FAISS has no GPU)."""
    import index.faiss_index as fi

    moved = []
    monkeypatch.setattr(fi, "gpu_available", lambda: True)
    monkeypatch.setattr(fi, "_gpu_resources", lambda gpu: None)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", lambda: type("Options", (), {})(), raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", lambda index, options=None: moved.append("all") or index,
                        raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", lambda res, gpu, index: moved.append(("one", gpu)) or index,
                        raising=False)
    flat = faiss.IndexFlatIP(8)
    assert fi._to_device(flat, "auto", "t") == (flat, "gpu") and moved == ["all"]
    ivf = faiss.index_factory(8, "IVF4,Flat", faiss.METRIC_INNER_PRODUCT)
    ivf.train(X[:200, :8].copy())
    ivf.add(X[:, :8].copy())
    monkeypatch.setattr(fi, "_gpu_free_bytes", lambda: 1000)  # smaller than the index
    moved.clear()
    assert fi._to_device(ivf, "cuda", "t") == (ivf, "gpu") and moved == [("one", 0)]  # only the quantizer moved

    import inspect

    from index.run_index import load_index_for_run

    assert inspect.signature(load_index_for_run).parameters["device"].default == "auto"


# --------------------------------------------------------------------------- report rows


def test_chance_levels_in_both_directions():
    from index.benchmark import chance_metrics

    cap_vid = np.repeat(np.arange(20), 3)  # 20 videos, 3 captions each
    m = chance_metrics(20, cap_vid)
    assert m["t2v"]["R@1"] == pytest.approx(5.0) and m["t2v"]["R@10"] == pytest.approx(50.0)
    assert m["t2v"]["MedR"] == 10.5
    for k in (1, 5, 10):  # P(one of a video's 3 captions among the top K of 60)
        assert m["v2t"][f"R@{k}"] == pytest.approx(100 * (1 - math.comb(57, k) / math.comb(60, k)))


def test_report_shows_through_index_rows_beside_the_exact_ones_and_chance(stage_data, tmp_path):
    run = trained_run(stage_data, "tiny_laff_ml")
    index = tmp_path / "ivf"
    assert cli("index", "--run", run, "--out", index, "--split", "test", "--factory", "IVF4,Flat",
               "--train-size", "12", "--nprobe", "1", "--device", "cpu") == 0
    report = tmp_path / "report"
    assert cli("benchmark", "--run", run, "--index", index, "--out", report, "--k", "5", "--device", "cpu") == 0
    metrics = json.loads((report / "metrics.json").read_text())
    lines = [ln for ln in (report / "table.md").read_text().splitlines() if ln.startswith("| ")]
    cells = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]] for ln in lines[1:]}
    via = f"{run.name} via index (IVF4,Flat, top 5)"
    assert set(cells) == {run.name, via, "chance"}
    assert cells[via][0] == f"{metrics['via_index']['t2v']['R@1']:.1f}" and cells[via][5] == "–"  # no v2t via index
    assert cells["chance"][0] == f"{100 / 12:.1f}" and cells["chance"][5] != "–"  # both directions
    # nprobe 1 of 4 lists misses videos the exact ranking finds: the rows show it
    assert metrics["via_index"]["t2v"]["R@5"] <= metrics["exact"]["t2v"]["R@5"]
    rows = json.loads((report / "rows.json").read_text())
    assert [r["model"] for r in rows] == [run.name, via, "chance"]
    assert (report / "recall.png").stat().st_size > 0
