"""The benchmark stage: retrieval metrics of a run through its index, and exactly.

Text->video runs through the FAISS index (top-``k``; DLLFA re-ranks those ``k`` with its
full score) and, by brute force over the same videos, exactly, so an approximate index
reports the recall it loses. Video->text ranks all captions, every caption of the video
relevant. Ties: ``ties`` of :mod:`index.metrics` (default the optimistic rank, 1 + candidates
scored strictly higher; ``average``/``pessimistic`` give exactly tied candidates no credit;
``official`` reports as the official LAFF evaluation does), stated in metrics.json and in
the title of table.md. With another mode, the optimistic t2v figures are reported beside.
``subsets`` adds exact t2v recall over named sets of captions (e.g. the synthetic set's
order-dependent captions).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Sequence

import numpy as np

from index.encoded_videos import ChunkedScoreRows, EncodedVideos
from index.metrics import DEFAULT_KS, OFFICIAL, TIES, t2v_v2t_metrics
from index.report import markdown_table, recall_plot, remove_temp_files, write_metrics_json, write_text
from index.run_index import DEFAULT_CHUNK, Run, load_index_for_run, run_video_bank, score_hits, video_id_chunks
from pipeline.job_lock import exclusive_folder
from vidfuse.errors import VidfuseError

log = logging.getLogger(__name__)

ROWS_FILE = "rows.json"


def candidate_ranks(cand_scores: np.ndarray, cand_pos: np.ndarray, targets: np.ndarray,
                    ties: str = "optimistic") -> np.ndarray:
    """Rank of each query's target within its retrieved candidates; inf when not retrieved.

    The tie rule of the exact metrics: optimistic = 1 + candidates scored strictly higher,
    pessimistic adds the other candidates tied with it, average is the mean of the two,
    official also counts the tied candidates of larger video position.
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    hit = cand_pos == targets[:, None]
    found = hit.any(axis=1)
    target_score = np.where(found, cand_scores[np.arange(len(targets)), hit.argmax(axis=1)], np.inf)[:, None]
    higher = (cand_scores > target_score).sum(axis=1)
    tied_others = (cand_scores == target_score).sum(axis=1) - 1
    if ties == "pessimistic":
        higher = higher + tied_others
    elif ties == "average":
        higher = higher + 0.5 * tied_others
    elif ties == OFFICIAL:
        higher = higher + ((cand_scores == target_score) & (cand_pos > targets[:, None])).sum(axis=1)
    return np.where(found, 1.0 + higher, np.inf)


def recall_from_ranks(ranks: np.ndarray, ks: Sequence[int], k_searched: int) -> dict:
    """R@K (percent) for the K the search depth can answer."""
    return {f"R@{k}": float(100.0 * np.mean(ranks <= k)) for k in ks if k <= k_searched}


def chance_metrics(num_videos: int, caption_video: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict:
    """What a random ranking scores in expectation, both directions: the floor of the table.

    t2v (one relevant video of N): R@K = K/N, MedR = (N+1)/2, mAP = H_N/N. v2t (a video's c
    captions among C): R@K = 1 - prod_{i<K} (C-c-i)/(C-i), the chance that one of the c is in
    the top K; its MedR and mAP have no short closed form and are left out.
    """
    n = max(int(num_videos), 1)
    t2v = {f"R@{k}": 100.0 * min(k, n) / n for k in ks}
    t2v.update({"MedR": (n + 1) / 2, "mAP": 100.0 * float(np.sum(1.0 / np.arange(1, n + 1))) / n})
    counts = np.bincount(np.asarray(caption_video, np.int64), minlength=n)
    counts = counts[counts > 0]
    total = int(counts.sum())
    v2t = {}
    for k in ks:
        i = np.arange(min(k, total))
        miss = np.prod(np.clip((total - counts[:, None] - i) / (total - i), 0, None), axis=1)
        v2t[f"R@{k}"] = float(100.0 * np.mean(1.0 - miss)) if counts.size else float("nan")
    return {"t2v": t2v, "v2t": v2t}


def _ranks(values) -> np.ndarray:
    """Ranks as stored in rows.json (not retrieved = null) -> floats with inf."""
    return np.array([np.inf if v is None else v for v in values], np.float64)


def _update_report(out_dir: str, name: str, result: dict, ranks: dict) -> None:
    """Add (or replace) this run's rows in the report folder's table and plot: its exact
    metrics, its metrics through the index (the recall an approximate index loses), and the
    chance level of the split."""
    rows_path = os.path.join(out_dir, ROWS_FILE)
    rows = json.loads(open(rows_path).read()) if os.path.isfile(rows_path) else []
    via = result["via_index"]
    via_name = f"{name} via index ({result['factory']}, top {via['k']})"
    rows = [r for r in rows if r.get("model") not in (name, via_name, CHANCE) and r.get("run") != name]
    rows.append({"model": name, "t2v": result["exact"]["t2v"], "v2t": result["exact"]["v2t"],
                 "t2v_ranks": ranks["t2v"].tolist()})
    rows.append({"model": via_name, "run": name, "t2v": via["t2v"], "t2v_ranks": ranks["via_index"].tolist()})
    rows.append({"model": CHANCE, **result["chance"]})
    write_metrics_json(rows_path, rows)
    modes = {r["model"]: r["t2v"].get("ties", "optimistic") for r in rows}
    said = (f"{result['ties']} ties" if set(modes.values()) == {result["ties"]}
            else "ties: " + ", ".join(f"{m} {t}" for m, t in modes.items()))
    table = markdown_table(rows, title=f"{result['split']} split, {result['num_videos']} videos, "
                                       f"{result['num_captions']} captions ({said}); "
                                       f"'via index' rows rank through the FAISS index (t2v only, R@K up to its "
                                       f"search depth), 'chance' is a random ranking")
    write_text(os.path.join(out_dir, "table.md"), table)
    max_k = max(1, min(100, result["num_videos"]))
    curves = {r["model"]: _ranks(r["t2v_ranks"]) for r in rows if "t2v_ranks" in r}
    curves[CHANCE] = {k: 100.0 * k / result["num_videos"] for k in range(1, max_k + 1)}
    recall_plot(os.path.join(out_dir, "recall.png"), curves, max_k=max_k, title="text-to-video recall@K")


CHANCE = "chance"
QUERY_CHUNK = 4096  # captions searched through the index at a time
SCORE_CHUNK_BYTES = 256 << 20  # one block of exact caption x video scores
FULL_EMBEDDING_CHUNK = 5_000  # DLLFA videos at a time: 2 x frames x dim floats each (245 MB at 12 x 512)
INDEX_KEY = "index_embedding"  # the stored videos' index embedding, beside a re-ranking head's full one


def _encode_for_benchmark(head, bank, exact_index: bool) -> dict:
    """What the benchmark keeps of a chunk of videos: the index embedding, and for a head whose
    index is not its full score (DLLFA) the structured embedding that score needs."""
    import torch

    from fusion.encode import encode_bank, encode_videos

    if exact_index:
        return {INDEX_KEY: encode_videos(head, bank)}
    emb = encode_bank(head, bank, "video")
    with torch.no_grad():
        return {**emb, INDEX_KEY: head.index_embedding(emb).float()}


def _full_scores(head, text_emb: dict, start: int, stop: int, chunk: dict) -> np.ndarray:
    """The head's full score of captions [start, stop) with one stored chunk of videos."""
    import torch

    from fusion.encode import embedding_similarity
    from fusion.heads import index_embeddings

    return embedding_similarity(head, index_embeddings(text_emb, slice(start, stop)),
                                {key: torch.from_numpy(value) for key, value in chunk.items()})


def run_benchmark(
    run_dir: str,
    index_dir: str,
    out_dir: str,
    captions: str | None = None,
    split: str = "test",
    splits: str | None = None,
    features: str | None = None,
    k: int = 100,
    name: str | None = None,
    device: str = "auto",
    ties: str = "optimistic",
    subsets: dict[str, Sequence[str]] | None = None,
    chunk_size: int | None = None,
) -> dict:
    """Evaluate a run through its index on one split; writes metrics.json, table.md, recall.png.

    Videos are read and encoded ``chunk_size`` at a time (default 50,000; 5,000 for DLLFA,
    whose full score keeps per-frame keys and values), once, and kept on disk beside the
    report while there is more than one chunk (see :mod:`index.encoded_videos`); exact scores
    are made 256 MB of captions x videos at a time, one video chunk after the other; captions
    go through the index 4096 at a time. Memory: the index, the caption side (features and
    query embeddings), one video chunk and one block of scores, never the n x d videos.
    ``device``: where the FAISS index searches (auto: the GPU when FAISS has one).
    ``ties``: how tied scores rank (see :mod:`index.metrics`); recorded in every report.
    """
    if ties not in TIES:
        raise VidfuseError(f"ties must be one of {', '.join(TIES)}, got {ties!r}")
    import torch

    from fusion.checkpoint import check_banks
    from fusion.encode import encode_bank, rerank_encoded
    from fusion.heads import index_embeddings
    from pipeline.training_set import Corpus, head_features, load_text_bank, without_failed_videos

    run = Run.load(run_dir)
    index = load_index_for_run(index_dir, run, device)
    features_dir = run.source("features", features or index.meta.get("extra", {}).get("features"))
    corpus = Corpus.read(run.source("captions", captions), splits or run.sources.get("splits"))
    video_names, text_names = head_features(run.config.head)
    listed = list(dict.fromkeys(corpus.split_videos(split)))
    split_videos = without_failed_videos(listed, features_dir, video_names, split)
    left_out = set(listed) - set(split_videos)  # unreadable videos: their captions are not asked
    position = {v: i for i, v in enumerate(index.ids)}
    missing = [v for v in split_videos if v not in position]
    if missing:
        raise VidfuseError(f"{len(missing)} {split} videos are not in {index_dir} (e.g. {missing[:3]}); "
                           f"build it with `vidfuse index --run {run_dir} --split {split}`")
    queries = [c for c in corpus.split_captions(split) if c.video_id not in left_out]
    targets = np.fromiter((position[c.video_id] for c in queries), dtype=np.int64, count=len(queries))
    texts, _, vocab_size = load_text_bank(features_dir, text_names, queries)
    head = run.head
    exact_index = bool(getattr(head, "exact_index", True))
    n_vid = len(index.ids)
    check_banks(run.info, texts=texts, vocab_size=vocab_size)
    text_emb = encode_bank(head, texts, "text")
    with torch.no_grad():
        t_query = head.query_embedding(text_emb).float().cpu().numpy()
    if exact_index:
        del text_emb  # the query embeddings are all its scores need
    chunk = chunk_size or (DEFAULT_CHUNK if exact_index else FULL_EMBEDDING_CHUNK)
    score_rows = max(1, min(4096, SCORE_CHUNK_BYTES // (4 * max(n_vid, 1))))
    k = max(1, min(k, n_vid))
    cand_scores = np.empty((len(queries), k), np.float32)
    cand_pos = np.empty((len(queries), k), np.int64)
    for s in range(0, len(queries), QUERY_CHUNK):
        cand_scores[s:s + QUERY_CHUNK], cand_pos[s:s + QUERY_CHUNK] = index.search_positions(t_query[s:s + QUERY_CHUNK], k)
    log.info("benchmark: %d captions against %d videos, videos encoded %d at a time", len(queries), n_vid, chunk)
    with EncodedVideos(out_dir if "://" not in out_dir else tempfile.gettempdir()) as videos:
        # each chunk of videos read and encoded once; every pass below reads one chunk at a time
        for part in video_id_chunks(index.ids, chunk):
            videos.add(_encode_for_benchmark(head, run_video_bank(run, features_dir, part), exact_index))
        stage1_rows = ChunkedScoreRows(len(queries), videos, lambda s, e, c: t_query[s:e] @ c[INDEX_KEY].T, [INDEX_KEY])
        full = stage1_rows if exact_index else ChunkedScoreRows(
            len(queries), videos, lambda s, e, c: _full_scores(head, text_emb, s, e, c),
            [key for key in videos.keys if key != INDEX_KEY])
        exact, ranks = t2v_v2t_metrics(full, targets, ties=ties, num_videos=n_vid, return_ranks=True,
                                       chunk_size=score_rows)
        result = {
            "run": run.path, "index": os.path.abspath(index_dir), "head": run.config.head.type,
            "split": split, "num_videos": len(index.ids), "num_captions": len(queries),
            "left_out_videos": sorted(left_out), "ties": ties, "factory": index.meta.get("factory"),
            "index_device": index.device, "search_params": index.meta.get("search_params", {}), "exact": exact,
        }
        t2v_ranks = {ties: ranks["t2v"]}
        if ties != "optimistic":  # what the sort-order-free optimistic count would have given, beside it
            optimistic, opt_ranks = t2v_v2t_metrics(full, targets, ties="optimistic", num_videos=n_vid,
                                                    return_ranks=True, chunk_size=score_rows)
            result["optimistic_t2v"], t2v_ranks["optimistic"] = optimistic["t2v"], opt_ranks["t2v"]
        via_ranks = candidate_ranks(cand_scores, cand_pos, targets, ties)
        via_index = {"k": k, "t2v": recall_from_ranks(via_ranks, DEFAULT_KS, k)}
        if not exact_index:
            # DLLFA: stage 1 ranks by s_temp (= the index); stage 2 re-ranks the k by the full score.
            stage1 = t2v_v2t_metrics(stage1_rows, targets, ties=ties, num_videos=n_vid, chunk_size=score_rows)
            full_keys = full.keys
            reranked = score_hits(cand_pos, lambda found: rerank_encoded(
                head, len(queries), lambda s, e: index_embeddings(text_emb, slice(s, e)),
                lambda rows: videos.take(rows, full_keys), found))
            via_index["stage1_t2v"] = via_index.pop("t2v")
            via_ranks = candidate_ranks(reranked, cand_pos, targets, ties)
            via_index["t2v"] = recall_from_ranks(via_ranks, DEFAULT_KS, k)
            result["exact_stage1"] = stage1
    for subset, caption_ids in (subsets or {}).items():
        wanted = set(caption_ids)
        mask = np.fromiter((c.caption_id in wanted for c in queries), dtype=bool, count=len(queries))
        result.setdefault("subsets", {})[subset] = {"captions": int(mask.sum()), **{
            ("t2v" if mode == ties else f"{mode}_t2v"): recall_from_ranks(r[mask], DEFAULT_KS, max(DEFAULT_KS))
            for mode, r in t2v_ranks.items()}}
    ranks["via_index"] = via_ranks
    result["chance"] = chance_metrics(n_vid, targets)
    via_index["recall_lost"] = {key: exact["t2v"][key] - value for key, value in via_index["t2v"].items()}
    result["via_index"] = via_index

    # One writer at a time (several runs may report into one folder: rows.json is read, then
    # rewritten); metrics.json last, so a report that has it has its table and plot too.
    with exclusive_folder(out_dir, "benchmark", wait=True):
        remove_temp_files(out_dir)
        _update_report(out_dir, name or os.path.basename(run.path.rstrip("/")), result, ranks)
        write_metrics_json(os.path.join(out_dir, "metrics.json"), result)
    return result
