"""Interactive retrieval: text queries against a run's index (DLLFA: index top-K, re-ranked)."""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from index.run_index import Run, load_index_for_run, rerank_hits
from pipeline.features import SOURCES_FILE



@dataclass
class Hit:
    rank: int
    video_id: str
    score: float
    path: str | None


class Searcher:
    """Run, index and text encoders loaded once; each query then costs one encode + one search."""

    def __init__(self, run_dir: str, index_dir: str, features_dir: str | None = None, device: str = "cpu", rerank_k: int = 100,
                 index_device: str | None = None):
        """``device``: the query encoder's (auto, cpu, cuda, cuda:N; gpu means cuda), and by default
        the index's too (a GPU index when FAISS has GPU support); ``index_device`` overrides it."""
        from fusion.checkpoint import check_banks
        from pipeline.features import read_feature_manifest
        from pipeline.query_encoder import QueryEncoder
        from pipeline.text_job import text_feature_dir
        from pipeline.training_set import LEARNED_TEXT_FEATURES, head_features

        from index.faiss_index import normalize_device

        self.run = Run.load(run_dir)
        self.index = load_index_for_run(index_dir, self.run, normalize_device(index_device or device))
        self.features_dir = self.run.source("features", features_dir or self.index.meta.get("extra", {}).get("features"))
        video_names, text_names = head_features(self.run.config.head)
        for name in text_names:  # queries are encoded by what each folder's manifest describes: check it
            if name not in LEARNED_TEXT_FEATURES:
                read_feature_manifest(text_feature_dir(self.features_dir, name), f"text/{name}")
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

    def _video_dirs(self) -> list[str]:
        path = os.path.join(self.features_dir, SOURCES_FILE)
        return json.load(open(path)).get("video_dirs", []) if os.path.isfile(path) else []

    def video_path(self, video_id: str) -> str | None:
        for folder in self.video_dirs:
            found = sorted(glob.glob(glob.escape(os.path.join(folder, video_id)) + ".*"))
            if found:
                return found[0]
        return None

    def search(self, text: str, k: int = 10) -> list[Hit]:
        return self.query(text, k).hits

    def query(self, text: str, k: int = 10) -> "Query":
        """The hits of one query, with what the head computed on the way (``vidfuse serve`` shows it)."""
        from fusion.encode import encode_bank

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
            video_id = self.index.ids[int(pos)]
            found.hits.append(Hit(rank, video_id, float(score), self.video_path(video_id)))
            found.positions.append(int(pos))
            found.first_stage.append(float(gist))
        return found


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
