"""`vidfuse index`, `benchmark` and `search` on runs trained on extracted synthetic features."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stage_fixtures import built_index, cli, features_with, stage_data, trained_run  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def runs(stage_data):
    return {"laff_ml": trained_run(stage_data, "tiny_laff_ml"), "dllfa": trained_run(stage_data, "tiny_dllfa"),
            "meanp": trained_run(stage_data, "tiny_meanp")}


def _split_banks(stage, run, split: str):
    from index.run_index import Run
    from pipeline.training_set import Corpus, load_split

    loaded = Run.load(str(run))
    return loaded, load_split(str(stage.features), Corpus.read(str(stage.captions)), split, loaded.config.head)


def _query_embeddings(run, banks) -> np.ndarray:
    from fusion.encode import encode_texts

    return encode_texts(run.head, banks.texts)


def _optimistic_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    own = scores[np.arange(len(targets)), targets]
    return 1 + (scores > own[:, None]).sum(axis=1)


def _error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith(f"vidfuse {command}: error:"), err
    assert "Traceback" not in "\n".join(err)
    return err[-1]


# --------------------------------------------------------------------------- index


def test_flat_index_equals_numpy_brute_force_over_the_run_embeddings(stage_data, runs, tmp_path, capsys):
    from index.faiss_index import VideoIndex
    from index.run_index import encode_run_videos

    out = tmp_path / "index"
    assert cli("index", "--run", runs["laff_ml"], "--out", out, "--split", "test", "--device", "cpu") == 0
    test_ids = stage_data.split("test")
    assert f"index: {len(test_ids)} videos added, {len(test_ids)} in {out} (Flat" in capsys.readouterr().out

    index = VideoIndex.load(str(out))
    run, banks = _split_banks(stage_data, runs["laff_ml"], "test")
    assert index.ids == banks.video_ids == test_ids
    assert index.meta["run"] == run.path and index.meta["head"] == "laff_ml"
    assert index.meta["extra"]["split"] == "test" and index.meta["extra"]["exact_score"] is True
    assert index.meta["extra"]["exact_search"] is True  # Flat: the FAISS search is exhaustive
    videos = encode_run_videos(run, str(stage_data.features), test_ids)
    assert videos.shape == (len(test_ids), run.config.head.laff_ml.dim)  # concat_h(e_h) / sqrt(h)
    np.testing.assert_allclose(np.linalg.norm(videos, axis=1), 1.0, rtol=1e-5)  # concat_h(e_h)/sqrt(h)
    np.testing.assert_array_equal(index.reconstruct_all(), videos)

    queries = _query_embeddings(run, banks)
    scores, hit_ids = index.search(queries, len(test_ids))
    brute = queries @ videos.T
    order = np.argsort(-brute, axis=1, kind="stable")
    np.testing.assert_allclose(scores, np.take_along_axis(brute, order, axis=1), rtol=1e-5, atol=1e-6)
    position = {v: j for j, v in enumerate(test_ids)}
    for q, row in enumerate(hit_ids):  # each hit has the brute-force score of its video
        assert sorted(row) == sorted(test_ids)
        np.testing.assert_allclose(brute[q, [position[v] for v in row]], scores[q], rtol=1e-5, atol=1e-6)
        # and where no near-tie makes the order arbitrary, it is the brute-force order
        ranked = brute[q, order[q]]
        clear = np.diff(ranked, prepend=np.inf) < -1e-5
        clear &= np.diff(ranked, append=-np.inf) < -1e-5
        assert [v for v, c in zip(row, clear) if c] == [test_ids[j] for j, c in zip(order[q], clear) if c]


def test_index_round_trip_through_the_run(stage_data, runs, tmp_path):
    from index.run_index import Run, build_index, load_index_for_run

    built, added = build_index(str(runs["laff_ml"]), str(tmp_path / "index"), split="val", device="cpu")
    assert added == len(stage_data.split("val"))
    loaded = load_index_for_run(str(tmp_path / "index"), Run.load(str(runs["laff_ml"])))
    assert loaded.ids == built.ids and loaded.meta == built.meta
    queries = np.random.default_rng(0).normal(size=(7, built.dim)).astype(np.float32)
    for a, b in zip(built.search(queries, 5), loaded.search(queries, 5)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_add_indexes_only_missing_videos_and_search_finds_them(stage_data, runs, tmp_path, capsys):
    from index.faiss_index import VideoIndex
    from index.run_index import Run, encode_run_videos

    run, out = runs["laff_ml"], tmp_path / "index"
    val, test = stage_data.split("val"), stage_data.split("test")
    assert cli("index", "--run", run, "--out", out, "--split", "val", "--device", "cpu") == 0
    assert cli("index", "--run", run, "--out", out, "--split", "test", "--add", "--device", "cpu") == 0
    assert f"index: {len(test)} videos added, {len(val) + len(test)} in" in capsys.readouterr().out
    assert cli("index", "--run", run, "--out", out, "--split", "test", "--add", "--device", "cpu") == 0
    assert f"index: 0 videos added, {len(val) + len(test)} in" in capsys.readouterr().out

    index = VideoIndex.load(str(out))
    assert index.ids == val + test
    videos = encode_run_videos(Run.load(str(run)), str(stage_data.features), test)
    np.testing.assert_array_equal(index.reconstruct_all()[len(val):], videos)
    scores, hits = index.search(videos, 1)
    assert [h[0] for h in hits] == test  # each added video is its own nearest neighbour
    np.testing.assert_allclose(scores[:, 0], (videos * videos).sum(1), rtol=1e-5)


def test_missing_or_mismatched_run_and_index_are_clear_errors(stage_data, runs, tmp_path, capsys):
    index_a = built_index(stage_data, runs["laff_ml"])
    other = runs["meanp"]
    assert cli("benchmark", "--run", other, "--index", index_a, "--out", tmp_path / "r") == 2
    err = _error(capsys, "benchmark")
    assert str(index_a) in err and str(runs["laff_ml"]) in err and str(other) in err
    assert cli("search", "--run", other, "--index", index_a, "a red circle") == 2
    assert str(runs["laff_ml"]) in _error(capsys, "search")
    assert cli("index", "--run", other, "--out", index_a, "--add", "--device", "cpu") == 2
    assert str(runs["laff_ml"]) in _error(capsys, "index")

    missing_run = tmp_path / "no-run"
    assert cli("index", "--run", missing_run, "--out", tmp_path / "i", "--device", "cpu") == 2
    assert str(missing_run) in _error(capsys, "index")
    missing_index = tmp_path / "no-index"
    assert cli("benchmark", "--run", runs["laff_ml"], "--index", missing_index, "--out", tmp_path / "r") == 2
    assert str(missing_index) in _error(capsys, "benchmark")
    assert not (tmp_path / "r").exists() and not (tmp_path / "i").exists()


def test_features_of_other_dims_than_the_run_are_a_clear_error(stage_data, runs, tmp_path, capsys):
    from extract_helpers import tiny_config
    from pipeline.features import load_feature_set
    from pipeline.text_job import run_text_extraction

    x3d = load_feature_set(str(stage_data.features / "x3d"))
    other = np.random.default_rng(0).normal(size=(len(x3d.ids), 96))
    features = features_with(stage_data, tmp_path / "features96", {"x3d": (x3d.ids, other)})
    run, index = runs["laff_ml"], built_index(stage_data, runs["laff_ml"])
    for command, args in (("index", ("--out", tmp_path / "i", "--device", "cpu")),
                          ("benchmark", ("--index", index, "--out", tmp_path / "r"))):
        assert cli(command, "--run", run, "--features", features, *args) == 2, command
        err = _error(capsys, command)
        assert "'x3d'" in err and "128" in err and "96" in err, err
    assert not (tmp_path / "i").exists() and not (tmp_path / "r").exists()

    # search reads only the text side: a bow vocabulary of another size
    smaller = features_with(stage_data, tmp_path / "small-vocab", {})
    for path in sorted((smaller / "text" / "bow").iterdir()):
        path.unlink()
    few = tmp_path / "few" / "captions.txt"
    few.parent.mkdir()
    few.write_text("".join(f"{v}#0 a red circle\n" for v in stage_data.split("train")))
    for split in ("train", "val", "test"):
        (few.parent / f"{split}.txt").write_text("".join(v + "\n" for v in stage_data.split(split)))
    run_text_extraction(str(few), str(smaller), tiny_config(), encoders=["bow"], progress=False)
    assert cli("search", "--run", run, "--index", index, "--features", smaller, "a red circle") == 2
    err = _error(capsys, "search")
    assert "'bow'" in err and str(load_feature_set(str(stage_data.features / "text" / "bow")).dim) in err, err


# --------------------------------------------------------------------------- benchmark


def test_benchmark_flat_through_index_equals_exact_and_writes_the_report(stage_data, runs, tmp_path, capsys):
    report = tmp_path / "report"
    index = built_index(stage_data, runs["laff_ml"])
    assert cli("benchmark", "--run", runs["laff_ml"], "--index", index, "--out", report) == 0
    out = capsys.readouterr().out
    for name in ("metrics.json", "table.md", "recall.png"):
        assert (report / name).stat().st_size > 0, name
    assert (report / "table.md").read_text() in out
    assert (report / "recall.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    metrics = json.loads((report / "metrics.json").read_text())
    exact, via = metrics["exact"], metrics["via_index"]
    assert metrics["ties"] == "optimistic" and metrics["num_videos"] == len(stage_data.split("test"))
    assert via["k"] == metrics["num_videos"]
    for key in ("R@1", "R@5", "R@10"):
        assert via["t2v"][key] == exact["t2v"][key] and via["recall_lost"][key] == 0.0

    # the exact numbers, recomputed by brute force
    from index.run_index import encode_run_videos

    run, banks = _split_banks(stage_data, runs["laff_ml"], "test")
    scores = _query_embeddings(run, banks) @ encode_run_videos(run, str(stage_data.features), banks.video_ids).T
    ranks = _optimistic_ranks(scores, banks.caption_video)
    assert metrics["num_captions"] == len(ranks)
    for k in (1, 5, 10):
        assert exact["t2v"][f"R@{k}"] == pytest.approx(100 * np.mean(ranks <= k))
    assert exact["t2v"]["MedR"] == pytest.approx(np.median(ranks))
    assert exact["t2v"]["MeanR"] == pytest.approx(ranks.mean())
    v2t_best = [min(_optimistic_ranks(scores.T[[v]], np.array([c]))[0] for c in np.flatnonzero(banks.caption_video == v))
                for v in range(len(banks.video_ids))]
    assert exact["v2t"]["R@1"] == pytest.approx(100 * np.mean(np.array(v2t_best) <= 1))

    # the same run with another tie rule: each report says which one it used
    assert cli("benchmark", "--run", runs["laff_ml"], "--index", index, "--out", report, "--ties", "average",
               "--name", "laff_ml_average") == 0
    capsys.readouterr()
    averaged = json.loads((report / "metrics.json").read_text())
    assert averaged["ties"] == averaged["exact"]["t2v"]["ties"] == averaged["exact"]["v2t"]["ties"] == "average"
    assert averaged["exact"]["t2v"]["MeanR"] >= exact["t2v"]["MeanR"]
    title = (report / "table.md").read_text().splitlines()[0]
    assert "optimistic" in title and "laff_ml_average average" in title, title


def test_benchmark_dllfa_reports_stage1_and_reranked_numbers(stage_data, runs, tmp_path):
    from fusion.encode import similarity_matrix
    from index.run_index import encode_run_videos

    run, banks = _split_banks(stage_data, runs["dllfa"], "test")
    index = built_index(stage_data, runs["dllfa"])
    full = similarity_matrix(run.head, banks.texts, banks.videos)
    stage1 = _query_embeddings(run, banks) @ encode_run_videos(run, str(stage_data.features), banks.video_ids).T
    targets = banks.caption_video

    assert cli("benchmark", "--run", runs["dllfa"], "--index", index, "--out", tmp_path / "all") == 0
    m = json.loads((tmp_path / "all" / "metrics.json").read_text())
    assert m["head"] == "dllfa"
    full_ranks, stage1_ranks = _optimistic_ranks(full, targets), _optimistic_ranks(stage1, targets)
    for k in (1, 5, 10):
        assert m["exact"]["t2v"][f"R@{k}"] == pytest.approx(100 * np.mean(full_ranks <= k))
        assert m["exact_stage1"]["t2v"][f"R@{k}"] == pytest.approx(100 * np.mean(stage1_ranks <= k))
        # the index holds every test video: stage 1 (v_g) finds all, the re-rank is the full score
        assert m["via_index"]["stage1_t2v"][f"R@{k}"] == m["exact_stage1"]["t2v"][f"R@{k}"]
        assert m["via_index"]["t2v"][f"R@{k}"] == m["exact"]["t2v"][f"R@{k}"]
    assert not np.array_equal(full_ranks, stage1_ranks)  # s_rel changes the ranking

    # a shallow index search: the re-rank sees only stage 1's top 3
    assert cli("benchmark", "--run", runs["dllfa"], "--index", index, "--out", tmp_path / "k3", "--k", "3") == 0
    m3 = json.loads((tmp_path / "k3" / "metrics.json").read_text())
    assert m3["via_index"]["k"] == 3 and set(m3["via_index"]["t2v"]) == {"R@1"}
    top3 = np.argsort(-stage1, axis=1, kind="stable")[:, :3]
    found = (top3 == targets[:, None]).any(axis=1)
    cand_full = np.take_along_axis(full, top3, axis=1)
    best = cand_full.max(axis=1)
    reranked_hit = found & (full[np.arange(len(targets)), targets] >= best)
    assert m3["via_index"]["t2v"]["R@1"] == pytest.approx(100 * reranked_hit.mean())
    assert m3["exact"] == m["exact"]


def _numbers(tree) -> list:
    """Every number of a metrics tree, in order (for comparing two reports within float tolerance)."""
    if isinstance(tree, dict):
        return [x for key in sorted(tree) for x in _numbers(tree[key])]
    if isinstance(tree, (list, tuple)):
        return [x for item in tree for x in _numbers(item)]
    return [tree] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []


@pytest.mark.parametrize("head", ["laff_ml", "dllfa"])
def test_benchmark_streamed_in_video_chunks_equals_the_one_chunk_benchmark(stage_data, runs, tmp_path, monkeypatch, head):
    """Chunks of 5 of the 12 test videos: every video read once, every pass over the videos (the
    exact scores, twice per caption chunk) holds one chunk at a time, and the report is the same.
    (DLLFA's re-rank reads only the candidates of one caption batch, by row.)"""
    import pipeline.training_set as training_set
    from index.encoded_videos import EncodedVideos

    index = built_index(stage_data, runs[head])
    common = ("--run", runs[head], "--index", index, "--device", "cpu", "--ties", "average")
    assert cli("benchmark", *common, "--out", tmp_path / "whole") == 0
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())

    read, seen, load, chunks = [], [], training_set.load_video_bank, EncodedVideos.chunks
    monkeypatch.setattr(training_set, "load_video_bank", lambda d, names, ids: read.append(len(ids)) or load(d, names, ids))

    def counted_chunks(self, keys=None):
        assert self._spill is not None and all(kept is None for kept in self._kept)  # on disk, not in memory
        for first, chunk in chunks(self, keys):
            seen.append(len(next(iter(chunk.values()))))
            yield first, chunk

    monkeypatch.setattr(EncodedVideos, "chunks", counted_chunks)
    assert cli("benchmark", *common, "--out", tmp_path / "streamed", "--chunk-size", "5") == 0
    streamed = json.loads((tmp_path / "streamed" / "metrics.json").read_text())
    assert read == [5, 5, 2]  # each video read and encoded once, 5 at a time
    assert seen and max(seen) == 5 and sum(seen) % 12 == 0  # every pass over the videos: chunk by chunk
    assert not list((tmp_path / "streamed").glob(".encoded-*"))  # the chunks on disk are removed
    for key in ("exact", "via_index", "optimistic_t2v", "exact_stage1"):
        assert (key in streamed) == (key in whole), key
        if key in whole:
            assert _numbers(streamed[key]) == pytest.approx(_numbers(whole[key]), abs=1e-9), key


def test_two_runs_into_one_report_folder_give_a_two_row_table(stage_data, runs, tmp_path):
    report = tmp_path / "report"
    for name in ("laff_ml", "dllfa", "laff_ml"):  # a rerun replaces its row
        assert cli("benchmark", "--run", runs[name], "--index", built_index(stage_data, runs[name]),
                   "--out", report) == 0
    rows = [line for line in (report / "table.md").read_text().splitlines() if line.startswith("| ")]
    assert len(rows) == 6  # header + two runs, exact and through the index, + the chance level
    names = [row.split("|")[1].strip() for row in rows[1:]]
    expected = [runs["laff_ml"].name, runs["dllfa"].name, "chance"]
    expected += [f"{runs[n].name} via index (Flat, top 12)" for n in ("laff_ml", "dllfa")]  # 12 test videos
    assert sorted(names) == sorted(expected)
    assert json.loads((report / "metrics.json").read_text())["head"] == "laff_ml"


# --------------------------------------------------------------------------- search


def test_search_command_prints_k_hits_with_ids_and_video_paths(stage_data, runs, capsys):
    index = built_index(stage_data, runs["laff_ml"])
    assert cli("search", "--run", runs["laff_ml"], "--index", index, "-k", "5",
               "a red circle slides left", "a blue square appears") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line for line in lines if line.startswith("query:")] == [
        "query: a red circle slides left", "query: a blue square appears"]
    hits = [line.split() for line in lines if not line.startswith("query:")]
    assert len(hits) == 10 and [int(h[0]) for h in hits] == [1, 2, 3, 4, 5] * 2
    test = set(stage_data.split("test"))
    for rank, score, video_id, path in hits:
        assert video_id in test and path == str(stage_data.dataset.video_path(video_id))
    scores = [float(h[1]) for h in hits[:5]]
    assert scores == sorted(scores, reverse=True)


def test_search_finds_the_video_of_a_dataset_caption_more_often_than_chance(stage_data, runs):
    """Over the train videos the run fitted: free-text queries, encoded at search time as
    extract-text encoded the stored caption features, find their video in the top 10."""
    from index.search import Searcher

    run_dir = runs["laff_ml"]
    searcher = Searcher(str(run_dir), str(built_index(stage_data, run_dir, "train")))
    run, banks = _split_banks(stage_data, run_dir, "train")
    stored = _query_embeddings(run, banks)
    k, hits = 10, []
    for i, caption in enumerate(banks.captions):
        from fusion.encode import encode_texts

        fresh = encode_texts(run.head, searcher.queries.bank([caption.text]))
        np.testing.assert_allclose(fresh[0], stored[i], rtol=1e-4, atol=1e-5)
        hits.append(caption.video_id in {h.video_id for h in searcher.search(caption.text, k)})
    chance = k / len(banks.video_ids)
    assert np.mean(hits) >= 2 * chance, (np.mean(hits), chance)


def test_dllfa_search_reranks_the_index_hits_by_the_full_score(stage_data, runs):
    from fusion.encode import similarity_matrix
    from index.search import Searcher

    run_dir = runs["dllfa"]
    searcher = Searcher(str(run_dir), str(built_index(stage_data, run_dir)))
    run, banks = _split_banks(stage_data, run_dir, "test")
    for text in ("a red circle slides left", banks.captions[0].text):
        hits = searcher.search(text, 5)
        full = similarity_matrix(run.head, searcher.queries.bank([text]), banks.videos)[0]
        order = np.argsort(-full, kind="stable")[:5]
        assert [h.video_id for h in hits] == [banks.video_ids[j] for j in order]
        np.testing.assert_allclose([h.score for h in hits], full[order], rtol=1e-5, atol=1e-6)
        assert all(h.path and h.path.endswith(".mp4") for h in hits)


def test_dllfa_rerank_through_an_approximate_index_skips_missing_hits(stage_data, runs, tmp_path):
    """IVF with nprobe 1 returns fewer than k hits (position -1): the re-rank scores only
    real candidates, in the benchmark and in search."""
    from fusion.encode import similarity_matrix
    from index.faiss_index import VideoIndex
    from index.search import Searcher

    run_dir, index = runs["dllfa"], tmp_path / "ivf"
    assert cli("index", "--run", run_dir, "--out", index, "--factory", "IVF4,Flat", "--nprobe", "1",
               "--device", "cpu") == 0
    assert cli("benchmark", "--run", run_dir, "--index", index, "--out", tmp_path / "report") == 0
    m = json.loads((tmp_path / "report" / "metrics.json").read_text())

    run, banks = _split_banks(stage_data, run_dir, "test")
    targets = banks.caption_video
    _, pos = VideoIndex.load(str(index)).search_positions(_query_embeddings(run, banks), len(banks.video_ids))
    assert (pos < 0).any(), "nprobe 1 should leave some hits missing"
    full = similarity_matrix(run.head, banks.texts, banks.videos)
    cand = np.where(pos >= 0, np.take_along_axis(full, np.maximum(pos, 0), axis=1), -np.inf)
    found = (pos == targets[:, None]).any(axis=1)
    own = full[np.arange(len(targets)), targets]
    ranks = np.where(found, 1 + (cand > own[:, None]).sum(axis=1), np.inf)
    for k in (1, 5, 10):
        assert m["via_index"]["t2v"][f"R@{k}"] == pytest.approx(100 * np.mean(ranks <= k))
        # exact minus via index; it can be below 0: a competitor the index misses cannot outrank
        # the caption's own video in the re-rank, as it does in the exact ranking
        assert m["via_index"]["recall_lost"][f"R@{k}"] == pytest.approx(
            m["exact"]["t2v"][f"R@{k}"] - m["via_index"]["t2v"][f"R@{k}"])

    searcher = Searcher(str(run_dir), str(index))
    hits = searcher.search(banks.captions[0].text, 10)
    assert 0 < len(hits) < 10 and all(np.isfinite(h.score) for h in hits)
    assert len({h.video_id for h in hits}) == len(hits)


# --------------------------------------------------------------------------- runs of an earlier recipe


def _as_old_laff_ml(run_dir) -> None:
    """Rewrite a run's stored configs as an earlier vidfuse wrote them: laff_ml meant the
    multi-head block (no batch_norm key, a projecting frame_pool)."""
    import torch

    for name in ("checkpoint.pt", "last.pt"):
        ckpt = torch.load(run_dir / name, weights_only=False)
        section = ckpt["config"]["head"]["laff_ml"]
        section.pop("batch_norm")
        section["frame_pool"] = {"dim": 0, "dropout": 0.2}
        torch.save(ckpt, run_dir / name)


def test_runs_of_the_earlier_laff_ml_are_refused_not_misread(stage_data, runs, tmp_path, capsys):
    import shutil

    run = tmp_path / "old_laff_ml"
    shutil.copytree(runs["laff_ml"], run)
    _as_old_laff_ml(run)
    index = tmp_path / "index"
    assert cli("index", "--run", run, "--out", index, "--split", "test", "--device", "cpu") == 2
    err = _error(capsys, "index")
    assert "multi-head LAFF" in err and "multi-level" in err and "--fresh" in err, err
    assert not index.exists()
    good_index = built_index(stage_data, runs["laff_ml"])
    assert cli("benchmark", "--run", run, "--index", good_index, "--out", tmp_path / "report") == 2
    assert "multi-level" in _error(capsys, "benchmark")
    assert cli("search", "--run", run, "--index", good_index, "a red circle") == 2
    assert "multi-level" in _error(capsys, "search")
    # resuming it is refused the same way; --fresh retrains it under today's recipe
    train = ("train", "--features", stage_data.features, "--captions", stage_data.captions, "--config",
             "tiny_laff_ml", "--out", run, "--set", "epochs=1", "--no-progress")
    assert cli(*train) == 2
    assert "multi-level" in _error(capsys, "train")
    assert cli(*train, "--fresh") == 0
