"""Interactive retrieval: text queries against a run's index (DLLFA: index top-K, re-ranked).

Two ways to encode a query, with the same hits: the run's head in torch (:class:`Searcher`,
which ``vidfuse serve`` uses for what the head computed on the way), and the head's text side
exported beside the index (:class:`ExportedSearcher`, :mod:`index.query_onnx`), which needs no
torch and so starts in a fraction of the time. :func:`open_searcher` picks one.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline.features import SOURCES_FILE

log = logging.getLogger(__name__)


@dataclass
class Hit:
    rank: int
    video_id: str
    score: float
    path: str | None


class _Hits:
    """What both searchers share: the index, where the videos are, and hits from index rows."""

    index: object  # index.faiss_index.VideoIndex
    features_dir: str

    def _video_dirs(self) -> list[str]:
        path = os.path.join(self.features_dir, SOURCES_FILE)
        return json.load(open(path)).get("video_dirs", []) if os.path.isfile(path) else []

    def video_path(self, video_id: str) -> str | None:
        for folder in self.video_dirs:
            found = sorted(glob.glob(glob.escape(os.path.join(folder, video_id)) + ".*"))
            if found:
                return found[0]
        return None

    def hit(self, rank: int, position: int, score: float) -> Hit:
        video_id = self.index.ids[int(position)]
        return Hit(rank, video_id, float(score), self.video_path(video_id))


class Searcher(_Hits):
    """Run, index and text encoders loaded once; each query then costs one encode + one search."""

    def __init__(self, run_dir: str, index_dir: str, features_dir: str | None = None, device: str = "cpu", rerank_k: int = 100,
                 index_device: str | None = None):
        """``device``: the query encoder's (auto, cpu, cuda, cuda:N; gpu means cuda), and by default
        the index's too (a GPU index when FAISS has GPU support); ``index_device`` overrides it."""
        from fusion.checkpoint import check_banks
        from index.faiss_index import normalize_device
        from index.run_index import Run, load_index_for_run
        from pipeline.query_encoder import QueryEncoder
        from pipeline.training_set import head_features

        self.run = Run.load(run_dir)
        self.index = load_index_for_run(index_dir, self.run, normalize_device(index_device or device))
        self.features_dir = self.run.source("features", features_dir or self.index.meta.get("extra", {}).get("features"))
        video_names, text_names = head_features(self.run.config.head)
        check_text_manifests(self.features_dir, text_names)
        self.queries = QueryEncoder(self.features_dir, text_names, "cuda" if str(device).lower() == "gpu" else device)
        self.rerank_k = rerank_k
        self.videos = None
        if not getattr(self.run.head, "exact_index", True):
            from pipeline.training_set import load_video_bank

            self.videos, _ = load_video_bank(self.features_dir, video_names, self.index.ids)
        # features of other dims than the run trained on: say so now, not as a shape error per query
        check_banks(self.run.info, videos=self.videos, texts=self.queries.bank(["a"]),
                    vocab_size=self.queries.vocab_size)
        self.video_dirs = self._video_dirs()

    def search(self, text: str, k: int = 10) -> list[Hit]:
        return self.query(text, k).hits

    def query(self, text: str, k: int = 10) -> "Query":
        """The hits of one query, with what the head computed on the way (``vidfuse serve`` shows it)."""
        import torch

        from fusion.encode import encode_bank
        from index.run_index import rerank_hits

        bank = self.queries.bank([text])
        with torch.no_grad():
            text_emb = encode_bank(self.run.head, bank, "text")
            query = self.run.head.query_embedding(text_emb).float().cpu().numpy()
        depth = min(len(self.index), max(k, self.rerank_k if self.videos is not None else k))
        scores, positions = self.index.search_positions(query, depth)
        first = scores
        if self.videos is not None:  # DLLFA stage 2: the full score of the retrieved candidates
            scores = rerank_hits(self.run.head, bank, self.videos, positions)
            order = np.argsort(-scores[0], kind="stable")
            scores, positions, first = scores[:, order], positions[:, order], first[:, order]
        found = Query(text, [], bank, text_emb, [], [])
        for rank, (score, pos, gist) in enumerate(zip(scores[0][:k], positions[0][:k], first[0][:k]), 1):
            if pos < 0:
                break
            found.hits.append(self.hit(rank, pos, score))
            found.positions.append(int(pos))
            found.first_stage.append(float(gist))
        return found


class ExportedSearcher(_Hits):
    """The index and its exported query encoder (see :mod:`index.query_onnx`): no torch, no head."""

    def __init__(self, index, encoder, features_dir: str | None = None):
        from pipeline.query_encoder import QueryEncoder

        self.index = index
        self.encoder = encoder
        self.features_dir = features_dir or index.meta.get("extra", {}).get("features")
        check_text_manifests(self.features_dir, encoder.text_features)
        self.queries = QueryEncoder(self.features_dir, encoder.text_features, "cpu")
        dims = {name: int(v.shape[1]) for name, v in self.queries.vectors(["a"]).items()}
        encoder.check_inputs(dims, self.queries.vocab_size, encoder.record["run"])
        self.video_dirs = self._video_dirs()

    def search(self, text: str, k: int = 10) -> list[Hit]:
        query = self.encoder.embed(self.queries.vectors([text]), self.queries.tokens([text]))
        scores, positions = self.index.search_positions(query, min(len(self.index), k))
        return [self.hit(rank, pos, score) for rank, (score, pos) in enumerate(zip(scores[0], positions[0]), 1)
                if pos >= 0]


def check_text_manifests(features_dir: str, text_names: Sequence[str]) -> None:
    """Queries are encoded by what each text folder's manifest describes: check those first."""
    from pipeline.features import read_feature_manifest
    from pipeline.text_features import LEARNED_TEXT_FEATURES, text_feature_dir

    for name in text_names:
        if name not in LEARNED_TEXT_FEATURES:
            read_feature_manifest(text_feature_dir(features_dir, name), f"text/{name}")


def open_searcher(run_dir: str, index_dir: str, features_dir: str | None = None, device: str = "cpu",
                  query_encoder: str = "auto") -> Searcher | ExportedSearcher:
    """The searcher for ``vidfuse search``: with ``query_encoder`` ``auto`` or ``onnx``, the
    exported query encoder where the index has one that fits the run as it is now and the
    device is the CPU; with ``torch``, or where there is none, the run's head.

    ``onnx`` refuses, saying why, where ``auto`` would fall back to torch."""
    from index.query_onnx import META_FILE, QueryEncoderError, load

    why = None
    if query_encoder == "torch":
        return Searcher(run_dir, index_dir, features_dir, device)
    if device != "cpu":
        why = f"the query encoder runs on {device}, and the exported one on the CPU only"
    else:
        from index.faiss_index import IndexStoreError, VideoIndex, read_meta

        try:  # meta.json alone: where the torch path is taken, it loads the index itself (once)
            encoder, why = load(index_dir, run_dir, read_meta(index_dir))
        except IndexStoreError as exc:
            encoder, why = None, str(exc)
        if encoder is not None:
            log.debug("queries encoded by the exported query encoder of %s (no torch)", index_dir)
            return ExportedSearcher(VideoIndex.load(index_dir, device="cpu"), encoder, features_dir)
    if query_encoder == "onnx":
        raise QueryEncoderError(f"--query-encoder onnx: {why}; `vidfuse index` writes one for heads that need no torch")
    if device == "cpu" and os.path.isfile(os.path.join(index_dir, META_FILE)):  # one there, but unusable: say so
        log.warning("queries encoded with torch (slower to start): %s; `vidfuse index --run %s --out %s --add` "
                    "writes a current one", why, run_dir, index_dir)
    else:
        log.debug("queries encoded with torch: %s", why)
    return Searcher(run_dir, index_dir, features_dir, device)


@dataclass
class Query:
    """One query's hits and its intermediate results: the text inputs and their encoding, the
    index rows of the hits, and each hit's stage-1 (index) score, which for a re-ranking head
    (DLLFA: the gist score) differs from its full score."""

    text: str
    hits: list[Hit]
    texts: object  # fusion.data.FeatureBank
    text_emb: dict
    positions: list[int]
    first_stage: list[float]


def format_hits(query: str, hits: Sequence[Hit]) -> str:
    lines = [f"query: {query}"]
    lines += [f"{h.rank:>3}  {h.score:8.4f}  {h.video_id}" + (f"  {h.path}" if h.path else "") for h in hits]
    return "\n".join(lines)
