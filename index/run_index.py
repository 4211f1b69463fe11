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
from typing import Sequence

import numpy as np

from index.faiss_index import IDS_FILE, INDEX_FILE, META_FILE, IndexStoreError, VideoIndex
from pipeline.training_set import RUN_SOURCES
from vidfuse.errors import VidfuseError

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


def encode_run_videos(run: Run, features_dir: str, video_ids: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Index embeddings of ``video_ids`` (rows in that order)."""
    from fusion.checkpoint import check_banks
    from fusion.encode import encode_videos
    from pipeline.training_set import head_features, load_video_bank

    bank, _ = load_video_bank(features_dir, head_features(run.config.head)[0], list(video_ids))
    check_banks(run.info, videos=bank)
    return encode_videos(run.head, bank, batch_size=batch_size)


def rerank_hits(head, texts, videos, positions: np.ndarray) -> np.ndarray:
    """Full-score re-rank of index hits (DLLFA stage 2); -inf where FAISS found no hit.

    An approximate index (IVF with a small nprobe) returns position -1 for a missing hit:
    those must not be scored as a video.
    """
    from fusion.encode import rerank_scores

    positions = np.asarray(positions)
    missing = positions < 0
    scores = rerank_scores(head, texts, videos, np.where(missing, 0, positions))
    scores[missing] = -np.inf
    return scores


def build_index(
    run_dir: str,
    out_dir: str,
    features_dir: str | None = None,
    split: str = "test",
    captions: str | None = None,
    splits: str | None = None,
    factory: str = "Flat",
    device: str = "auto",
    train_size: int | None = None,
    nprobe: int | None = None,
    add: bool = False,
) -> tuple[VideoIndex, int]:
    """Build (or, with ``add``, extend) the index of a run; returns (index, videos added)."""
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
            return existing, 0
    log.info("encoding %d videos with the %s head", len(ids), run.config.head.type)
    embeddings = encode_run_videos(run, features_dir, ids)
    if existing is not None:
        existing.add(embeddings, ids)
        index = existing
    else:
        index = VideoIndex.build(
            embeddings, ids, factory=factory, metric="ip", device=device, train_size=train_size, nprobe=nprobe,
            meta={"run": run.path, "head": run.config.head.type, "features": str(Path(features_dir).resolve()),
                  "split": split, "exact": bool(getattr(run.head, "exact_index", True)), "weights": run.fingerprint},
        )
    index.save(out_dir)
    return index, len(ids)


def load_index_for_run(index_dir: str, run: Run, device: str = "cpu") -> VideoIndex:
    """The index, refusing one built from another run (its embeddings would be meaningless)."""
    try:
        index = VideoIndex.load(index_dir, device=device)
    except IndexStoreError as exc:
        raise RunError(str(exc)) from None
    check_index_run(index, index_dir, run, f"build it with `vidfuse index --run {run.path} --out {index_dir}`")
    return index
