"""The index stage: a trained run's video embeddings -> a FAISS index on disk.

A run (``vidfuse train --out RUN``) knows its head, the features it read (``run.json``) and
its split files; the index holds one fused embedding per video of the chosen split (LAFF:
e; LAFF-ml: concat_h(e_h)/sqrt(h); DLLFA: the video gist v_g, re-ranked at query time).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import numpy as np

from index import query_onnx
from index.faiss_index import IDS_FILE, INDEX_FILE, META_FILE, IndexStoreError, VideoIndex, sample_positions
from pipeline.training_set import RUN_SOURCES
from vidfuse.errors import VidfuseError

if TYPE_CHECKING:
    from index.autoindex import ExactTopK

log = logging.getLogger(__name__)

ALL_VIDEOS = "all"


class RunError(VidfuseError):
    """A run folder that is missing, incomplete, or does not match the index given with it."""


@dataclass
class Run:
    """A trained head and where its training inputs came from."""

    path: str
    head: object
    config: object
    info: dict
    sources: dict  # run.json: features, captions, splits, manifests
    fingerprint: str = ""  # of the head's weights: an index records it, so a retrained run is noticed

    @classmethod
    def load(cls, run_dir: str, device: str = "cpu") -> "Run":
        from fusion.checkpoint import load_run, unfinished_training

        path = Path(run_dir)
        why = unfinished_training(path)  # its checkpoint.pt is only the best epoch so far
        if why:
            raise RunError(
                f"{run_dir} has not finished training ({why}): it was stopped or killed, or is still training; "
                f"rerun `vidfuse train ... --out {run_dir}` to finish it"
            )
        if not (path / "checkpoint.pt").is_file():
            raise RunError(f"{run_dir} is not a trained run (no checkpoint.pt); train one with `vidfuse train --out {run_dir}`")
        head, cfg, info = load_run(path, device=device)
        sources = json.loads((path / RUN_SOURCES).read_text()) if (path / RUN_SOURCES).is_file() else {}
        return cls(str(path.resolve()), head, cfg, info, sources, weights_fingerprint(head))

    def source(self, key: str, given: str | None) -> str:
        """A path given on the command line, else the one the run was trained with."""
        value = given or self.sources.get(key)
        if not value:
            raise RunError(f"no --{key} given and {self.path}/{RUN_SOURCES} does not record one")
        return value


def weights_fingerprint(head) -> str:
    """Short hash of a head's weights: what its embeddings depend on."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(head.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def check_index_run(index: VideoIndex, index_dir: str, run: Run, fix: str) -> None:
    """Refuse an index whose meta.json names another run, or this run before it was retrained."""
    if index.meta.get("run") != run.path:
        raise RunError(f"index {index_dir} was built from run {index.meta.get('run')}, not {run.path}: {fix}")
    recorded = index.meta.get("extra", {}).get("weights")
    if index.meta.get("head") != run.config.head.type or (recorded and recorded != run.fingerprint):
        raise RunError(
            f"index {index_dir} was built from {run.path} before it was retrained (meta.json records head "
            f"{index.meta.get('head')!r}, weights {recorded}; the run now has {run.config.head.type!r}, weights "
            f"{run.fingerprint}): its embeddings are stale; {fix}"
        )


def split_video_ids(run: Run, features_dir: str, split: str, captions: str | None, splits: str | None) -> list[str]:
    """Videos to index: a split's ids (less those whose extraction failed, with a warning), or
    every video present in all the head's feature sets."""
    from pipeline.shards import existing_ids
    from pipeline.training_set import Corpus, head_features, without_failed_videos

    if split != ALL_VIDEOS:
        corpus = Corpus.read(run.source("captions", captions), splits or run.sources.get("splits"))
        return without_failed_videos(list(dict.fromkeys(corpus.split_videos(split))), features_dir,
                                     head_features(run.config.head)[0], split)
    names = {n.split("@")[0] for n in head_features(run.config.head)[0]}
    present = set.intersection(*(existing_ids(os.path.join(features_dir, n)) for n in names))
    return sorted(present)


def run_video_bank(run: Run, features_dir: str, video_ids: Sequence[str]):
    """The head's video features of ``video_ids`` (rows in that order), checked against the run."""
    from fusion.checkpoint import check_banks
    from pipeline.training_set import head_features, load_video_bank

    bank, _ = load_video_bank(features_dir, head_features(run.config.head)[0], list(video_ids))
    check_banks(run.info, videos=bank)
    return bank


def encode_run_videos(run: Run, features_dir: str, video_ids: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Index embeddings of ``video_ids`` (rows in that order)."""
    from fusion.encode import encode_videos

    return encode_videos(run.head, run_video_bank(run, features_dir, video_ids), batch_size=batch_size)


DEFAULT_CHUNK = 50_000  # videos read and encoded at a time: 800 MB of 4096-d embeddings at most
TUNE_QUERIES = 1000


def video_id_chunks(video_ids: Sequence[str], chunk_size: int = DEFAULT_CHUNK) -> Iterator[list[str]]:
    """``video_ids`` in consecutive chunks of ``chunk_size``: the unit every streaming pass reads."""
    for start in range(0, len(video_ids), chunk_size):
        yield list(video_ids[start:start + chunk_size])


def encoded_chunks(run: Run, features_dir: str, video_ids: Sequence[str],
                   chunk_size: int = DEFAULT_CHUNK) -> Iterator[tuple[np.ndarray, list[str]]]:
    """(embeddings, ids) of ``video_ids`` a chunk at a time, read from the shards holding them."""
    for part in video_id_chunks(video_ids, chunk_size):
        yield encode_run_videos(run, features_dir, part), part


def stream_into(index: VideoIndex, chunks: Iterable[tuple[np.ndarray, list[str]]],
                exact: "ExactTopK | None" = None) -> int:
    """Add every chunk (and show it to ``exact``, the tuning's exact search); returns the count."""
    added = 0
    for emb, ids in chunks:
        index.add(emb, ids)
        if exact is not None:
            exact.add(emb)
        added += len(ids)
        log.info("indexed %d videos", index.ntotal)
    return added


def build_streaming(
    chunks: Callable[[Sequence[int] | None], Iterable[tuple[np.ndarray, list[str]]]],
    n: int,
    dim: int,
    factory: str | None = "Flat",
    max_index_memory: int | None = None,
    target_recall: float = 0.95,
    device: str = "auto",
    train_size: int | None = None,
    nprobe: int | None = None,
    meta: dict | None = None,
    seed: int = 0,
    shards: int = 1,
) -> VideoIndex:
    """An index of n vectors of dim ``dim`` built chunk by chunk: memory is a chunk plus the index.

    ``chunks(None)`` yields (embeddings, ids) of all n vectors in order; ``chunks(positions)``
    those of the given (sorted) positions only: the seeded training sample, read the same way.
    With ``max_index_memory`` (bytes) the factory is chosen from the budget (its code among the
    equal-size ones by a trial on the training sample, index.autoindex.trial_codes), and nprobe /
    efSearch tuned to ``target_recall`` (recall@10 against exact search, computed while the
    vectors are added, on up to 1000 sampled vectors as queries, each one's own row left out).
    """
    from index.autoindex import ExactTopK, auto_train_rows, best_code, budget_index, tune_search

    shard_size = -(-n // shards) if shards > 1 else None
    if max_index_memory is not None:
        index = budget_index(n, dim, max_index_memory, "ip", device, meta, seed, shard_size)
    else:
        index = VideoIndex.empty(dim, factory, "ip", device, meta, seed, shard_size)
    exact = queries = own = None
    if index.needs_training or max_index_memory is not None:
        rows = (auto_train_rows(index, n) if max_index_memory is not None and train_size is None
                else index.train_rows(n, train_size))
        if max_index_memory is not None:
            rows = max(rows, min(n, TUNE_QUERIES))  # the tuning's queries come from the sample too
        positions = sample_positions(n, rows, seed)
        sample = np.concatenate([emb for emb, _ in chunks(positions)])
        if max_index_memory is not None:
            index = best_code(index, n, sample)
        if index.needs_training:
            index.train(sample)
        if max_index_memory is not None:
            pick = np.sort(np.random.default_rng(seed + 1).permutation(len(positions))[:TUNE_QUERIES])
            queries, own = sample[pick], positions[pick]
            exact = ExactTopK(queries, 11)
        del sample
    stream_into(index, chunks(None), exact)
    if exact is not None:
        tune_search(index, queries, exact.result()[1], k=10, target=target_recall, own=own)
    if nprobe is not None:
        index.set_nprobe(nprobe)
    return index


def rerank_hits(head, texts, videos, positions: np.ndarray) -> np.ndarray:
    """Full-score re-rank of index hits (DLLFA stage 2); -inf where FAISS found no hit.

    An approximate index (IVF with a small nprobe) returns position -1 for a missing hit:
    those must not be scored as a video.
    """
    from fusion.encode import rerank_scores

    return score_hits(positions, lambda found: rerank_scores(head, texts, videos, found))


def score_hits(positions: np.ndarray, score: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``score(positions)`` of index hits, -inf where FAISS found none (position -1)."""
    positions = np.asarray(positions)
    missing = positions < 0
    scores = score(np.where(missing, 0, positions))
    scores[missing] = -np.inf
    return scores


def build_index(
    run_dir: str,
    out_dir: str,
    features_dir: str | None = None,
    split: str = "test",
    captions: str | None = None,
    splits: str | None = None,
    factory: str | None = "Flat",
    device: str = "auto",
    train_size: int | None = None,
    nprobe: int | None = None,
    add: bool = False,
    max_index_memory: int | None = None,
    target_recall: float = 0.95,
    shards: int = 1,
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[VideoIndex, int]:
    """Build (or, with ``add``, extend) the index of a run; returns (index, videos added).

    Videos are read and encoded ``chunk_size`` at a time and added as they come. The index is
    ``factory``, or with ``max_index_memory`` (bytes) the one that budget allows (see
    index.autoindex), tuned to ``target_recall``; ``shards`` > 1 writes it as that many shards.
    """
    run = Run.load(run_dir)
    features_dir = run.source("features", features_dir)
    ids = split_video_ids(run, features_dir, split, captions, splits)
    existing = None
    if add and any((Path(out_dir) / f).exists() for f in (INDEX_FILE, IDS_FILE, META_FILE)):  # damaged: refused
        try:
            existing = VideoIndex.load(out_dir, device=device)
        except IndexStoreError as exc:
            raise RunError(f"{exc}; rebuild it without --add") from None
        check_index_run(existing, out_dir, run, "rebuild it without --add")
        known = set(existing.ids)
        ids = [v for v in ids if v not in known]
        if not ids:
            log.info("index %s already holds every video of %s", out_dir, split)
            query_onnx.write(run, out_dir)  # refreshed: the run may have been retrained to the same weights
            return existing, 0
    log.info("encoding %d videos with the %s head, %d at a time", len(ids), run.config.head.type, chunk_size)
    if existing is not None:
        stream_into(existing, encoded_chunks(run, features_dir, ids, chunk_size))
        index = existing
    else:
        def chunks(positions):
            wanted = ids if positions is None else [ids[p] for p in positions]
            return encoded_chunks(run, features_dir, wanted, chunk_size)

        dim = encode_run_videos(run, features_dir, ids[:1]).shape[1] if ids else 1
        exact_score = bool(getattr(run.head, "exact_index", True))
        index = build_streaming(
            chunks, len(ids), dim, factory, max_index_memory, target_recall, device, train_size, nprobe,
            meta={"run": run.path, "head": run.config.head.type, "features": str(Path(features_dir).resolve()),
                  "split": split, "weights": run.fingerprint,
                  # the index's inner product is the head's own video-text score (false for DLLFA, whose
                  # index holds the video gist and whose full score re-ranks the hits); says nothing of
                  # whether the FAISS search itself is exact, which is "exact_search"
                  "exact_score": exact_score},
            shards=shards,
        )
        index.meta["extra"]["exact_search"] = index.meta["factory"] == "Flat"
    index.save(out_dir)
    query_onnx.write(run, out_dir)
    return index, len(ids)


def load_index_for_run(index_dir: str, run: Run, device: str = "auto") -> VideoIndex:
    """The index, refusing one built from another run (its embeddings would be meaningless).

    ``device`` "auto" searches on the GPU(s) when FAISS has them, as build does."""
    try:
        index = VideoIndex.load(index_dir, device=device)
    except IndexStoreError as exc:
        raise RunError(str(exc)) from None
    check_index_run(index, index_dir, run, f"build it with `vidfuse index --run {run.path} --out {index_dir}`")
    return index
